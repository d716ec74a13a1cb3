"""The `tinygrad-rnn` command (also `python -m tinygrad_rnn`).

Each subcommand is one module of this package with ``add_arguments(parser)`` and
``run(args)``. Only the module of the requested subcommand is imported: the table below is
all that ``tinygrad-rnn --help`` needs, and ``tinygrad-rnn train --help`` imports `train`
alone.
"""

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "train": "train a character-level language model (default: on Python's own standard library "
             "source)",
    "sample": "generate text from a trained checkpoint",
    "gradflow": "plot how the gradient flows back through time for RNN, LSTM and GRU",
    "bench": "time forward+backward of the built-in cells",
}


def _subcommand_module(name):
    return importlib.import_module(f"{__name__}.{name}")


def build_parser(command=None):
    """The parser of every subcommand's name and help; only ``command`` gets its arguments
    (and only its module is imported)."""
    parser = argparse.ArgumentParser(prog="tinygrad-rnn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            _subcommand_module(name).add_arguments(p)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    # The top level has no options but --help, so the first word is the subcommand.
    command = next((word for word in argv if not word.startswith("-")), None)
    parser = build_parser(command if command in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return _subcommand_module(args.command).run(args) or 0
