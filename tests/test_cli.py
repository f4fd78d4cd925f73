"""The command line: doctor's report, usage errors, and the shape of `bench --quick --json`.

Nothing here asserts a duration: the machine is shared and noisy, and the benchmark's figures
are for people to read, not for tests to gate on.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from nsmagic import bench, cli


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nsmagic", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


def test_doctor_prints_the_tier_line():
    completed = run_cli("doctor")
    assert completed.returncode == 0, completed.stderr
    first = completed.stdout.splitlines()[0]
    assert first.startswith("nsmagic doctor: ")
    assert any(f"(tier: {tier})" in first for tier in ("full", "userns", "none"))


@pytest.mark.parametrize("args", [
    [],
    ["bogus"],
    ["doctor", "--bogus"],
    ["bench", "--runs", "0"],
    ["bench", "--runs", "many"],
    ["bench", "--json"],
    ["bench", "--only", "no-such-benchmark"],
])
def test_bad_options_exit_2_with_one_line_on_stderr(args):
    completed = run_cli(*args, timeout=30)
    assert completed.returncode == 2
    assert completed.stdout == ""
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, completed.stderr
    assert "error" in lines[0]


def test_help_lists_the_commands():
    completed = run_cli("--help", timeout=30)
    assert completed.returncode == 0
    assert "doctor" in completed.stdout and "bench" in completed.stdout


def test_every_registered_benchmark_has_a_unique_key_and_a_known_group():
    keys = [b.key for b in bench.BENCHMARKS]
    assert len(keys) == len(set(keys))
    assert {b.group for b in bench.BENCHMARKS} <= {"anchor", "api", "kernel", "named",
                                                   "monitor", "future"}
    assert {b.kind for b in bench.BENCHMARKS} == {"time", "figure"}
    for _, numerator, denominator, _ in bench.RATIOS:
        for key in (numerator, denominator):
            assert key in keys or key in ("cell_overhead", "api_for_kernel")
    for _, key, target in bench.TARGETS:
        assert key in keys and target > 0


def test_summarize_gives_median_and_spread():
    stats = bench.summarize([3.0, 1.0, 2.0])
    assert stats["median"] == 2.0
    assert stats["min"] == 1.0 <= stats["p10"] <= stats["p25"] <= stats["median"]
    assert stats["median"] <= stats["p75"] <= stats["p90"] <= stats["max"] == 3.0
    assert bench.summarize([5.0])["p10"] == 5.0


def test_parser_is_reachable_from_the_console_script():
    args = cli.build_parser().parse_args(["bench", "--quick", "--runs", "2"])
    assert args.command == "bench" and args.quick and args.runs == 2


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    directory = tmp_path_factory.mktemp("bench")
    json_path, page = directory / "bench.json", directory / "performance.md"
    completed = run_cli("bench", "--quick", "--json", str(json_path), "--markdown", str(page),
                        timeout=300)
    assert completed.returncode == 0, completed.stderr
    return completed.stdout, json.loads(json_path.read_text()), page.read_text()


def test_bench_quick_json_has_the_documented_keys(quick_report):
    _, report, _ = quick_report
    assert report["schema"] == bench.SCHEMA
    assert {"schema", "machine", "method", "benchmarks", "figures", "derived", "ratios",
            "targets", "notes", "duration_s"} <= set(report)
    assert {"kernel", "cpu_model", "cores", "memory_gib", "python", "is_root", "date",
            "cgroup", "nsmagic_pool_env"} <= set(report["machine"])
    assert "version" in report["machine"]["cgroup"]
    assert {"timer", "anchors", "api", "kernel", "runs", "warmup_rounds", "gap_s", "order",
            "spread", "quick", "figures"} <= set(report["method"])
    assert report["method"]["quick"] is True
    assert set(report["benchmarks"]) == {b.key for b in bench.BENCHMARKS if b.kind == "time"}
    assert set(report["figures"]) == {b.key for b in bench.BENCHMARKS if b.kind == "figure"}
    for key, entry in report["benchmarks"].items():
        assert {"label", "group", "status", "reason", "samples"} <= set(entry), key
        assert entry["status"] in ("ok", "missing", "not measured", "failed"), key
        if entry["status"] == "ok":
            assert len(entry["samples"]) == report["method"]["runs"], key
            assert all(s > 0 for s in entry["samples"]), key
            assert {"median", "p10", "p90", "p25", "p75", "min", "max"} <= set(entry), key
            assert entry["p10"] <= entry["median"] <= entry["p90"], key
        else:
            assert entry["reason"], key  # never silently skipped
    for entry in report["ratios"]:
        assert {"name", "numerator", "denominator", "target", "value", "met"} <= set(entry)
        if entry["value"] is not None and entry["target"] is not None:
            assert entry["met"] == (entry["value"] <= entry["target"])
    for key, entry in report["figures"].items():
        assert {"label", "group", "unit", "status", "reason", "value", "detail",
                "details"} <= set(entry), key
        assert entry["status"] in ("ok", "missing", "not measured", "failed"), key
        if entry["status"] == "ok":
            assert entry["value"] >= 0 and entry["unit"] and entry["detail"], key
        else:
            assert entry["reason"] and entry["value"] is None, key
    assert [t["key"] for t in report["targets"]] == [key for _, key, _ in bench.TARGETS]
    for entry in report["targets"]:
        assert {"name", "key", "unit", "target", "value", "met"} <= set(entry)
        if entry["value"] is None:
            assert entry["met"] is None and entry["why"]
        else:
            assert entry["met"] == (entry["value"] <= entry["target"])


def test_bench_quick_measures_named_containers_and_the_sampler(quick_report):
    stdout, report, page = quick_report
    assert report["benchmarks"]["exec_named"]["group"] == "named"
    assert report["figures"]["idle_pss"]["unit"] == "MB"
    assert report["figures"]["sampler_cpu"]["unit"] == "% of a core"
    pss = report["figures"]["idle_pss"]
    if pss["status"] == "ok":
        details = pss["details"]
        assert details["containers"] == bench.QUICK_IDLE_CONTAINERS
        assert details["processes"] >= details["containers"]  # pid 1 of each at least
        assert details["left_after_cleanup"] == 0  # checked by the run (else: failed)
        assert "--quick" in pss["detail"]
    sampler = report["figures"]["sampler_cpu"]
    if sampler["status"] == "ok":
        assert sampler["details"]["sampled"] == bench.SAMPLER_CONTAINERS
        assert sampler["details"]["ticks"] > 0
    for title in ("## Figures", "## Absolute targets"):
        assert title in page
    assert "figures (measured once" in stdout and "absolute targets" in stdout


def test_bench_quick_reports_what_is_missing_instead_of_skipping(quick_report):
    stdout, report, _ = quick_report
    for key in ("floor", "unshare", "bwrap", "runc"):
        entry = report["benchmarks"][key]
        assert entry["status"] in ("ok", "missing")
        if entry["status"] == "missing":
            assert f"missing: {entry['reason']}" in stdout


def test_bench_quick_table_and_page(quick_report):
    stdout, report, page = quick_report
    assert "median" in stdout and "p10-p90" in stdout and "ratios" in stdout
    assert page.startswith("# Performance")
    assert report["machine"]["date"] in page
    assert "busybox-static" in page and "bubblewrap" in page
