"""Thin wrapper: `python tools/generate.py ...` == `coperception generate ...` (see `--help`)."""

import sys

from coperception.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
