"""Every CLI command's implementation: each module has ``register(subparsers)``, which adds its
parser and sets ``func`` (parsed args -> exit code). Heavy imports happen inside those functions
so that ``coperception --help`` stays fast."""

from coperception.engine.commands import demo, evaluate, generate, train, visualize

#: Command modules in help order.
COMMANDS = (generate, train, evaluate, visualize, demo)
