"""Thin wrapper: `python tools/demo.py ...` == `coperception demo ...` (see `--help`)."""

import sys

from coperception.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
