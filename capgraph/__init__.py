"""capgraph: declarative pipeline graphs for GPU vision -> condition -> generation, served as
one capability on Ray Serve.

Everything installs under this one name; the folders stay at the top of the repository:
`capgraph.engine` (engine/: graph spec, validation, the node contract, the executor),
`capgraph.nodes` (nodes/: one module per node family), `capgraph.serve` (serve/: the Ray
Serve compiler, the HTTP capability, Livepeer glue) and `capgraph.cli` (cli/: the
`capgraph` command).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("capgraph")
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"
