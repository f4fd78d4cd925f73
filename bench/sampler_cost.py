#!/usr/bin/env python3
"""What the monitor's sampler thread costs: CPU time of that thread per second of wall time.

Starts N containers (default 10) that sleep, samples them at R Hz (default 10, the maximum)
for S seconds, and reports the sampler thread's own CPU time (time.thread_time() measured
inside the thread) divided by the wall time. Target: under 1% of one core.

    .venv/bin/python bench/sampler_cost.py [--containers 10] [--rate 10] [--seconds 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

import nsmagic
from nsmagic.monitor import Monitor
from nsmagic.runtime.launcher import close_default_launcher


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--containers", type=int, default=10)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    hold = args.seconds + 6
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(
        nsmagic.run(f"import time; time.sleep({hold})", memory="64M", cpus=0.5)))
        for _ in range(args.containers)]
    monitor = Monitor(rate=args.rate)
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # wait until every container runs
            running = [r for r in nsmagic.runtime.registry.REGISTRY.records()
                       if r.state == "running"]
            if len(running) >= args.containers:
                break
            time.sleep(0.05)
        else:
            print(f"only {len(running)} of {args.containers} containers started", file=sys.stderr)
            return 1
        with monitor.watch():
            time.sleep(args.seconds)
            ticks, cpu_s, wall_s = monitor.ticks, monitor.sampler_cpu_s, monitor.sampler_wall_s
            first_s = monitor.first_tick_cpu_s
        sampled = [s for s in monitor.series() if len(s)]
    finally:
        for thread in threads:
            thread.join(hold + 30)
        close_default_launcher()
    share = cpu_s / wall_s if wall_s else float("nan")
    steady = (cpu_s - first_s) / wall_s if wall_s else float("nan")
    per_tick_us = cpu_s / ticks * 1e6 if ticks else float("nan")
    report = {
        "containers": args.containers, "sampled": len(sampled), "rate_hz": args.rate,
        "wall_s": round(wall_s, 3), "ticks": ticks, "sampler_cpu_s": round(cpu_s, 5),
        "cpu_share_of_one_core_percent": round(share * 100, 3),
        "steady_share_percent": round(steady * 100, 3),
        "first_tick_cpu_ms": round(first_s * 1000, 2),
        "cpu_per_tick_us": round(per_tick_us, 1),
        "cpu_per_container_sample_us": round(per_tick_us / max(1, len(sampled)), 1),
        "sources": sorted({s.source for s in sampled}),
        "target_percent": 1.0, "met": share * 100 < 1.0,
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{report['sampled']} containers ({', '.join(report['sources'])}) sampled at "
              f"{args.rate:g} Hz for {wall_s:.1f} s: {ticks} ticks")
        print(f"sampler thread CPU: {cpu_s * 1000:.1f} ms = {share * 100:.3f}% of one core "
              f"({per_tick_us:.0f} us a tick, {report['cpu_per_container_sample_us']:.0f} us "
              f"a container); target < 1%: {'met' if report['met'] else 'NOT met'}")
        print(f"of which the first tick (find the cgroup driver, open files): "
              f"{first_s * 1000:.1f} ms; steady state {steady * 100:.3f}% of one core")
    return 0 if report["met"] else 2


if __name__ == "__main__":
    sys.exit(main())
