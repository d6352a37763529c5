"""The ``coperception`` command.

Each stage that offers a subcommand has a ``commands.py`` with ``register(subparsers)``, which
adds its parser and sets ``func`` (a callable taking the parsed args and returning an exit
code). Heavy imports happen inside those callables so that ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# PyTorch's CPU allocator backs large tensors (the zero-padded pillar batch) with transparent
# huge pages when this is set; it must be set before torch is imported (measured ~4x cheaper
# allocation of the pillar tensor).
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from coperception.errors import CoperceptionError

#: Modules whose ``register`` adds subcommands, in help order.
COMMAND_MODULES: tuple[str, ...] = (
    "coperception.sim.commands",
    "coperception.train.commands",
    "coperception.eval.commands",
    "coperception.viz.commands",
    "coperception.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coperception", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except CoperceptionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
