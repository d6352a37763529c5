"""Thin wrapper: `python tools/eval.py ...` == `coperception eval ...` (see `--help`)."""

import sys

from coperception.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
