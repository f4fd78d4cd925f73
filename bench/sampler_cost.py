#!/usr/bin/env python3
"""What the monitor's sampler thread costs: CPU time of that thread per second of wall time.

Starts N containers (default 10) that sleep, samples them at R Hz (default 10, the maximum)
for S seconds, and reports the sampler thread's own CPU time (time.thread_time() measured
inside the thread) divided by the wall time. Target: under 0.5% of one core (issue 19).
The measurement itself is nsmagic_bench.benchmarks.sampler_cost, which `python -m nsmagic
bench` runs too.

    .venv/bin/python bench/sampler_cost.py [--containers 10] [--rate 10] [--seconds 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys

from nsmagic.runtime.launcher import close_default_launcher
from nsmagic_bench.benchmarks import sampler_cost


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--containers", type=int, default=10)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    try:
        report = sampler_cost(args.containers, args.rate, args.seconds)
    finally:
        close_default_launcher()
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key}: {value}")
    return 0 if report.get("met") else 2


if __name__ == "__main__":
    sys.exit(main())
