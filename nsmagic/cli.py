"""`python -m nsmagic COMMAND`: the API outside notebooks.

Commands: `doctor` (what this host allows, and why not) and `bench` (start-up benchmarks).
Each command is a `_cmd_NAME(args) -> exit code` function plus its parser in build_parser();
add `run`, `ls`, `stats`, `prune` the same way.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

PROG = "nsmagic"
USAGE_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (try --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _keys(text: str) -> list[str]:
    return [k.strip() for k in text.split(",") if k.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Run code in Linux namespaces and cgroups.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    doctor = commands.add_parser("doctor", help="what this host allows, and why not")
    doctor.set_defaults(handler=_cmd_doctor)

    from nsmagic import bench as bench_module

    bench = commands.add_parser(
        "bench", help="start-up benchmarks against unshare, bwrap and runc",
        description="Time nsmagic and the anchors (unshare, bwrap, runc), interleaved, and "
                    "print medians, spreads and ratios.")
    bench.add_argument("--runs", type=_positive_int, default=bench_module.DEFAULT_RUNS,
                       metavar="N", help=f"timed rounds (default {bench_module.DEFAULT_RUNS}; "
                                         f"--quick: {bench_module.QUICK_RUNS})")
    bench.add_argument("--quick", action="store_true",
                       help="a few rounds only: checks that everything runs, in seconds")
    bench.add_argument("--json", metavar="FILE", dest="json_path",
                       help="write raw samples, medians, ratios, machine and method as JSON")
    bench.add_argument("--markdown", metavar="FILE", dest="markdown_path",
                       help="write the performance page (docs/performance.md) from this run")
    keys = ", ".join(b.key for b in bench_module.BENCHMARKS)
    bench.add_argument("--only", type=_keys, metavar="KEYS",
                       help=f"comma-separated benchmarks to run, of: {keys}")
    bench.set_defaults(handler=_cmd_bench)
    return parser


def _cmd_doctor(args: argparse.Namespace) -> int:
    from nsmagic.host import probe

    print(probe().describe())
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from nsmagic import bench

    if args.only:
        try:
            bench.select(args.only)
        except ValueError as error:
            print(f"{PROG} bench: error: {error}", file=sys.stderr)
            return USAGE_ERROR
    return bench.main(runs=args.runs, quick=args.quick, json_path=args.json_path,
                      markdown_path=args.markdown_path, only=args.only)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `nsmagic` and `python -m nsmagic`; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.error("choose a command: doctor or bench")
    return args.handler(args)
