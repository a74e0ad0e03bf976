"""Livepeer glue for a served graph: BYOC jobs and registration, Live Runner heartbeats,
ai-runner-compatible routes and pytrickle live frames.

Entry points (each module imports its heavy pieces only when used):

- `livepeer.routes.mount(app, plan, run, is_ready, settings)`: adds the Livepeer routes
  (`/ready`, `POST /{capability}`, ai-runner routes, `/stream/*`) to the ingress's app, or
  to `local_app`'s; `livepeer.guard` holds what they share (error shape, token, gate).
- `livepeer.settings.load_settings(plan, section)` and `check_livepeer_section(raw, plan)`:
  the graph file's `livepeer:` section.
- `livepeer.registrar.register_graph(path)` and `runners_json(path)`: what
  `capgraph register` and `capgraph runners-json` call.
- `livepeer.live.stream_server(...)`: pytrickle's StreamServer for the graph (extra `livepeer`).
- `livepeer.local.local_app(plan, settings)`: the same surface over the in-process executor.
"""
