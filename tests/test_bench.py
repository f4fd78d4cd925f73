"""The benchmark (nsmagic_bench/, beside the package in a checkout, not installed with it): how
`nsmagic bench` reaches it, that no other command loads it, its registry and statistics, and the
shape of `bench --quick --json`.

Nothing here asserts a duration: the machine is shared and noisy, and the benchmark's figures
are for people to read, not for tests to gate on.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from nsmagic_bench import benchmarks as bench


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nsmagic", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


# -- how the command line reaches it ---------------------------------------------------------
def test_nsmagic_run_does_not_import_the_benchmark(tmp_path):
    # A fresh interpreter runs `python -m nsmagic run -- true` and, as it exits, writes down
    # every module it had imported.
    modules = tmp_path / "modules.json"
    code = textwrap.dedent("""
        import atexit, json, runpy, sys
        report = sys.argv.pop(1)

        def write_modules():
            with open(report, "w") as handle:
                json.dump(sorted(sys.modules), handle)

        atexit.register(write_modules)
        sys.argv = ["nsmagic", "run", "--", "true"]
        runpy.run_module("nsmagic", run_name="__main__", alter_sys=True)
    """)
    completed = subprocess.run([sys.executable, "-c", code, str(modules)], capture_output=True,
                               text=True, timeout=60, check=False)
    assert completed.returncode == 0, completed.stderr
    imported = json.loads(modules.read_text())
    assert "nsmagic.cli" in imported
    assert [name for name in imported if name.split(".")[0] == "nsmagic_bench"] == []


def test_bench_hands_its_options_to_the_benchmark():
    completed = run_cli("bench", "--help", timeout=30)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("usage: nsmagic bench")
    for option in ("--runs", "--quick", "--json", "--markdown", "--only"):
        assert option in completed.stdout
    assert all(b.key in completed.stdout for b in bench.BENCHMARKS)


def test_without_the_benchmark_bench_says_in_one_line_where_it_is():
    # As with an installed wheel: nsmagic imports, nsmagic_bench is on no entry of sys.path.
    code = ("import os, sys; from nsmagic import cli; "
            "sys.path[:] = [p for p in sys.path "
            "if not os.path.isdir(os.path.join(p or '.', 'nsmagic_bench'))]; "
            "sys.exit(cli.main(['bench', '--quick']))")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               timeout=30, check=False)
    assert completed.returncode == 2
    assert completed.stdout == ""
    [line] = completed.stderr.strip().splitlines()
    assert line.startswith("nsmagic bench: error: ")
    assert "clone" in line and "python -m nsmagic bench" in line


# -- the benchmark itself --------------------------------------------------------------------
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
