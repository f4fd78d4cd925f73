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
    for option in ("--runs", "--quick", "--json", "--markdown", "--only", "--images", "--v2"):
        assert option in completed.stdout
    assert all(key in completed.stdout for b in bench.BENCHMARKS for key in b.keys)


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
    keys = [key for b in bench.BENCHMARKS for key in b.keys]
    assert len(keys) == len(set(keys))
    assert {b.group for b in bench.BENCHMARKS} <= {"anchor", "api", "kernel", "named",
                                                   "monitor", "images", "future"}
    assert {b.kind for b in bench.BENCHMARKS} == {"time", "figure"}
    assert {b.option for b in bench.BENCHMARKS} <= {None, *bench.OPTIONS}
    for b in bench.BENCHMARKS:
        assert b.every >= 1 and (b.kind == "time" or (b.every == 1 and not b.also)), b.key
    differences = [d.key for d in bench.DIFFERENCES]
    for d in bench.DIFFERENCES:
        assert {d.minuend, d.subtrahend, d.after} <= set(keys)
    for ratio in bench.RATIOS:
        for key in (ratio.numerator, ratio.denominator):
            assert key in keys or key in (*differences, "api_for_kernel")
    for _, key, target in bench.TARGETS:
        assert key in keys and target > 0
    assert set(bench.V2_KEYS) <= set(keys)


def test_select_runs_an_option_s_rows_only_when_asked():
    default = {b.key for b in bench.select(None)}
    with_images = {b.key for b in bench.select(None, bench.OPTIONS)}
    image_rows = {b.key for b in bench.BENCHMARKS if b.option == "images"}
    assert image_rows and not image_rows & default and image_rows <= with_images
    # A companion's key selects the row that measures it; an option's row by its key.
    assert [b.key for b in bench.select(["sustained_p90"])] == ["sustained"]
    assert [b.key for b in bench.select(["pull_skopeo"])] == ["pull_tools"]
    with pytest.raises(ValueError):
        bench.select(["no-such-row"])


def test_ratios_pair_rounds_and_honour_their_direction():
    def row(samples, rounds):
        return {"status": "ok", "samples": samples, "rounds": rounds}

    report = {"benchmarks": {"unshare": row([1.0, 2.0, 3.0], [0, 1, 2]),
                             "sustained": row([4.0], [1]),
                             "concurrent": row([1.0], [1]), "concurrent_seq": row([3.0], [1])},
              "figures": {}}
    bench.derive(report)
    ratios = {r["name"]: r for r in report["ratios"]}
    sustained = ratios["sustained loop, median start / unshare"]
    assert sustained["value"] == 2.0  # medians of each row's own samples
    assert sustained["per_round_p10"] == sustained["per_round_p90"] == 2.0  # round 1 only
    assert sustained["met"] is False and sustained["direction"] == "<="
    rate = next(r for r in report["ratios"] if r["numerator"] == "concurrent_seq")
    assert rate["value"] == 3.0 and rate["direction"] == ">=" and rate["met"] is True
    assert ratios["ours+limits / unshare"]["value"] is None


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
    assert {"os", "kernel", "machine", "cpu_model", "cores", "memory_gib", "python", "is_root",
            "date", "checkout", "load_1min_start", "load_1min_end", "cgroup",
            "nsmagic_pool_env"} <= set(report["machine"])
    assert "version" in report["machine"]["cgroup"]
    assert {"timer", "anchors", "api", "kernel", "runs", "warmup_rounds", "gap_s", "order",
            "spread", "quick", "figures"} <= set(report["method"])
    assert report["method"]["quick"] is True
    assert report["method"]["options"] == {"images": False, "v2": False}
    assert "v2_guest" not in report
    assert set(report["benchmarks"]) == {key for b in bench.BENCHMARKS
                                         if b.kind == "time" and b.option is None
                                         for key in b.keys}
    assert set(report["figures"]) == {b.key for b in bench.BENCHMARKS if b.kind == "figure"}
    for key, entry in report["benchmarks"].items():
        assert {"label", "group", "status", "reason", "samples"} <= set(entry), key
        assert entry["status"] in ("ok", "missing", "not measured", "failed"), key
        if entry["status"] == "ok":
            # A heavy row is sampled in one round of `every`, from the first timed round on.
            expected = list(range(0, report["method"]["runs"], entry["every"]))
            assert entry["rounds"] == expected and len(entry["samples"]) == len(expected), key
            assert all(s > 0 for s in entry["samples"]), key
            assert {"median", "p10", "p90", "p25", "p75", "min", "max"} <= set(entry), key
            assert entry["p10"] <= entry["median"] <= entry["p90"], key
        else:
            assert entry["reason"], key  # never silently skipped
    for entry in report["ratios"]:
        assert {"name", "numerator", "denominator", "target", "direction", "value",
                "met"} <= set(entry)
        if entry["value"] is not None and entry["target"] is not None:
            at_least = entry["direction"] == ">="
            assert entry["met"] == (entry["value"] >= entry["target"] if at_least
                                    else entry["value"] <= entry["target"])
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
    for key in ("floor", "unshare", "bwrap", "runc", "crun"):
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


def test_bench_quick_has_the_sustained_concurrent_hardened_and_image_rows(quick_report):
    stdout, report, _ = quick_report
    rows = report["benchmarks"]
    for key, companion in (("sustained", "sustained_p90"), ("concurrent", "concurrent_seq")):
        assert rows[companion]["of"] == key and rows[companion]["status"] == rows[key]["status"]
        if rows[key]["status"] == "ok":
            assert rows[key]["rounds"] == rows[companion]["rounds"] == [0]
    if rows["sustained"]["status"] == "ok":
        assert rows["sustained"]["median"] <= rows["sustained_p90"]["median"]
    for key in ("api_host_root", "api_no_seccomp", "api_true", "api_image", "crun"):
        assert rows[key]["status"] == "ok" or rows[key]["reason"], key
    if rows["crun"]["status"] == "missing" and report["machine"]["cgroup"]["version"] == "hybrid":
        assert "hybrid" in rows["crun"]["reason"]
    for name in ("hardened_cost", "seccomp_cost", "image_cost"):
        if name in report["derived"]:
            entry = report["derived"][name]
            assert len(entry["samples"]) == len(entry["rounds"]) == report["method"]["runs"]
    assert "load average" in stdout and report["machine"]["checkout"] in stdout
