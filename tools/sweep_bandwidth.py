"""Thin wrapper: `python tools/sweep_bandwidth.py ...` == `coperception sweep ...` (see `--help`)."""

import sys

from coperception.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
