"""The ``rope-triton`` command line.

``rope-triton bench [options]`` checks and times the kernel against its peers (see
:mod:`rope_triton.bench`; ``rope-triton bench --help`` lists the options).
``rope-triton precision [options]`` prints our error and Hugging Face's at long context
(:mod:`rope_triton.bench.precision`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser; each subcommand parses its own arguments."""
    from .. import __version__

    parser = argparse.ArgumentParser(prog="rope-triton", description="Rotary position embedding in Triton.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # No help of its own: `rope-triton bench --help` reaches the benchmark's full parser.
    sub.add_parser("bench", add_help=False, help="check and time rope-triton against its peers")
    sub.add_parser(
        "precision", add_help=False, help="our error and Hugging Face's at 4k, 128k and 1M positions"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rope-triton`` console script.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name (default ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status.
    """
    parser = build_parser()
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else list(argv))
    if args.command == "bench":
        from . import run as bench

        return bench.main(rest, prog="rope-triton bench")
    if args.command == "precision":
        from . import precision

        return precision.main(rest) or 0
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    parser.print_help()
    return 2
