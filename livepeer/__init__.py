"""Livepeer glue for a served graph: BYOC jobs and registration, Live Runner heartbeats,
ai-runner-compatible routes and pytrickle live frames, mounted on the capability.
Each module imports its heavy pieces only when used; docs/livepeer.md lists the entry points.
"""
