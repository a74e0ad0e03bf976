"""`python -m capgraph`: the capgraph command."""

from capgraph.cli import main

main()
