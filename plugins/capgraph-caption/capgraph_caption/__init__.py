"""capgraph-caption: the `caption` node family (image -> Text) for capgraph graphs.

Installed with pip, it registers through the `capgraph.nodes` entry point; capgraph
imports nothing from here until a graph names `type: caption`."""
