"""`python -m cli`: the capgraph command."""

from cli import main

main()
