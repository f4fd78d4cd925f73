"""The options of `nsmagic bench`, which nsmagic's command line hands over as they came."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from nsmagic_bench import benchmarks

PROG = "nsmagic bench"
USAGE_ERROR = 2  # as every nsmagic command: bad options are one line on stderr, exit 2


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
    parser = _Parser(
        prog=PROG,
        description="Time nsmagic and the anchors (unshare, bwrap, runc, crun), interleaved, "
                    "and print medians, spreads and ratios.")
    parser.add_argument("--runs", type=_positive_int, default=benchmarks.DEFAULT_RUNS,
                        metavar="N", help=f"timed rounds (default {benchmarks.DEFAULT_RUNS}; "
                                          f"--quick: {benchmarks.QUICK_RUNS})")
    parser.add_argument("--quick", action="store_true",
                        help="a few rounds only: checks that everything runs, in seconds")
    parser.add_argument("--json", metavar="FILE", dest="json_path",
                        help="write raw samples, medians, ratios, machine and method as JSON")
    parser.add_argument("--markdown", metavar="FILE", dest="markdown_path",
                        help="write the performance page (docs/performance.md) from this run")
    parser.add_argument("--images", action="store_true",
                        help="also time pulls against skopeo + umoci and image starts against "
                             "podman (slow; needs docker-registry, skopeo, umoci, podman)")
    parser.add_argument("--v2", action="store_true",
                        help=f"also run {', '.join(benchmarks.V2_KEYS)} inside the cgroup v2 "
                             f"test guest (qemu; {benchmarks.V2_RUNS} rounds, emulated where "
                             "KVM fails) and report its ratios")
    keys = ", ".join(key for b in benchmarks.BENCHMARKS for key in b.keys)
    parser.add_argument("--only", type=_keys, metavar="KEYS",
                        help=f"comma-separated benchmarks to run (a row of --images too), "
                             f"of: {keys}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the options (sys.argv's when argv is None), run, return the exit status."""
    args = build_parser().parse_args(argv)
    if args.only:
        try:
            benchmarks.select(args.only)
        except ValueError as error:
            print(f"{PROG}: error: {error}", file=sys.stderr)
            return USAGE_ERROR
    return benchmarks.main(runs=args.runs, quick=args.quick, json_path=args.json_path,
                           markdown_path=args.markdown_path, only=args.only,
                           images=args.images, v2=args.v2)
