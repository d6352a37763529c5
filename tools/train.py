"""Thin wrapper: `python tools/train.py ...` == `coperception train ...` (see `--help`)."""

import sys

from coperception.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
