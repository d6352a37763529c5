"""Thin wrapper: `python tools/viz.py ...` == `coperception viz ...` (see `--help`)."""

import sys

from coperception.cli import main

if __name__ == "__main__":
    sys.exit(main(["viz", *sys.argv[1:]]))
