"""The `tinygrad-rnn` command (also `python -m tinygrad_rnn`).

Each subcommand lives in its own module with ``add_arguments(parser)`` and ``run(args)``;
this file only dispatches, importing the module that is asked for.
"""

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "train": ("tinygrad_rnn.training.lm", "train a character-level language model (default: on "
              "Python's own standard library source)"),
    "sample": ("tinygrad_rnn.training.sample", "generate text from a trained checkpoint"),
    "gradflow": ("tinygrad_rnn.inspect.gradflow_cli", "plot how the gradient flows back through "
                 "time for RNN, LSTM and GRU"),
    "bench": ("tinygrad_rnn.training.bench_cli", "time forward+backward of the built-in cells"),
}


def build_parser():
    parser = argparse.ArgumentParser(prog="tinygrad-rnn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        try:
            importlib.import_module(module).add_arguments(p)
        except ModuleNotFoundError as exc:
            if not module.startswith(exc.name or "?"):
                raise
            p.set_defaults(_missing=True)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command is None:
        parser.print_help()
        return 2
    if getattr(args, "_missing", False):
        parser.error(f"'{args.command}' is not available in this build")
    return importlib.import_module(args._module).run(args) or 0
