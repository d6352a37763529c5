"""coperception: collaborative (V2X) perception under a bandwidth budget.

Stages (one subpackage each): geometry, structures, data, sim, encoders, comm, fusion, heads,
models, train, eval, drive, viz, engine. docs/architecture.md has the flow of one frame and the
layers.
"""

__version__ = "0.1.0"
