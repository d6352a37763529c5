"""coperception: collaborative (V2X) perception under a bandwidth budget.

Stages (one subpackage each): geometry, data, sim, encoders, comm, fusion, heads, models,
train, eval, drive, viz. See DESIGN.md in the repository for the flow of one frame.
"""

__version__ = "0.1.0"
