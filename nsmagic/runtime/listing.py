"""Tables of the kernel's containers (`%container ls`, `stats`) and `prune`."""

from __future__ import annotations

import html
import time
from dataclasses import dataclass

from nsmagic.cgroups import pid_alive
from nsmagic.cgroups.limits import format_size
from nsmagic.runtime.named import ContainerManager, ManagedContainer
from nsmagic.tables import html_table, text_table

EMPTY_CONTAINERS = "no containers: start one with %container start NAME"

# Readable names of the figures of a stats record (CgroupStats fields, or the process-based
# figures of hosts without cgroups); the unit is in the value ("0.067 s", "12 MiB").
FIGURE_NAMES = {
    "cpu_usage_ns": "cpu usage",
    "cpu_user_ns": "cpu user",
    "cpu_system_ns": "cpu system",
    "cpu_periods": "cpu periods",
    "cpu_throttled_periods": "cpu periods throttled",
    "cpu_throttled_ns": "cpu time throttled",
    "memory_current": "memory",
    "memory_peak": "memory peak",
    "memory_limit": "memory limit",
    "swap_current": "swap",
    "oom_events": "out-of-memory events",
    "oom_kills": "out-of-memory kills",
    "pids_current": "tasks",
    "pids_limit": "task limit",
    "pids_denied": "forks refused",  # at the task limit
    "source": "measured from",
}


@dataclass
class Table:
    """Rows with a header, shown as text in a terminal and as HTML in a notebook; a table
    without rows shows the sentence `empty` instead of a bare header."""

    header: list[str]
    rows: list[list[str]]
    empty: str = "nothing to show"

    def text(self) -> str:
        """Aligned columns, or the empty sentence."""
        return text_table(self.header, self.rows) if self.rows else self.empty

    def _repr_pretty_(self, printer, cycle: bool) -> None:  # noqa: ANN001
        printer.text(self.text())

    def _repr_html_(self) -> str:
        if not self.rows:
            return f"<p>{html.escape(self.empty)}</p>"
        return html_table(self.header, self.rows)


def _stats(managed: ManagedContainer) -> dict | None:
    if managed.state != "running":
        return managed.result.stats
    if not managed.result.cgroup or managed.result.cgroup_driver not in ("v1", "v2"):
        return _process_stats(managed.result.pid)
    try:
        from nsmagic.cgroups import detect_driver

        return detect_driver().open(managed.result.cgroup).stats().as_dict()
    except (KeyError, OSError):
        return None


def _process_stats(pid: int | None) -> dict | None:
    """Without a cgroup (rlimit hosts): sum over pid 1 and its descendants, through psutil."""
    if pid is None:
        return None
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
        cpu = memory = 0.0
        for process in processes:
            times = process.cpu_times()
            cpu += times.user + times.system
            memory += process.memory_info().rss
    except psutil.Error:
        return None
    return {"cpu_usage_ns": int(cpu * 1e9), "memory_current": int(memory),
            "pids_current": len(processes), "source": "processes (no cgroup on this host)"}


def _uptime(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def container_table(containers: list[ManagedContainer]) -> Table:
    """One row per container: name, state, pid, namespaces, limits, uptime, cpu, memory,
    address."""
    rows = []
    for managed in containers:
        result = managed.result
        stats = _stats(managed) or {}
        cpu_ns = stats.get("cpu_usage_ns")
        memory = stats.get("memory_current")
        state = managed.state if managed.state == "running" else f"exited ({result.describe()})"
        rows.append([
            managed.name, state, result.pid or "-",
            ",".join(sorted(managed.spec.namespaces)), managed.spec.limits.describe(),
            _uptime(time.time() - managed.started_at),
            f"{cpu_ns / 1e9:.2f}s" if cpu_ns is not None else "-",
            format_size(memory) if memory is not None else "-",
            result.address or "-",
        ])
    return Table(["name", "state", "pid", "namespaces", "limits", "uptime", "cpu", "memory",
                  "address"], rows, EMPTY_CONTAINERS)


def stats_table(managed: ManagedContainer) -> Table:
    """The cgroup figures of one container, by readable name with units."""
    return Table(["figure", managed.name], figure_rows(_stats(managed) or {}),
                 f"no figures for {managed.name}: its cgroup could not be read")


def figure_rows(stats: dict) -> list[list[str]]:
    """[name, value] rows of the figures a stats record has (None and empty ones left out):
    'cpu usage', '0.067 s'; 'memory', '12 MiB'; one row per pressure resource."""
    rows = []
    for key, value in stats.items():
        if value in (None, {}) or key == "timestamp":
            continue
        if key == "pressure" and isinstance(value, dict):
            rows += [[f"{resource} pressure", _pressure(figures)]
                     for resource, figures in value.items()]
            continue
        rows.append([figure_name(key), format_figure(key, value)])
    return rows


def figure_name(key: str) -> str:
    """The readable name of a stats figure ('cpu_usage_ns' -> 'cpu usage')."""
    if key in FIGURE_NAMES:
        return FIGURE_NAMES[key]
    for unit in ("_ns", "_usec", "_bytes"):
        key = key.removesuffix(unit)
    return key.replace("_", " ")


def format_figure(key: str, value: object) -> str:
    """One figure of a stats record as text: sizes for memory and swap, seconds for _ns."""
    if isinstance(value, int) and key.startswith(("memory", "swap")):
        return format_size(value)
    if isinstance(value, int) and key.endswith("_ns"):
        return f"{value / 1e9:.3f} s"
    return str(value)


def _pressure(figures: dict) -> str:
    # PSI: the share of the last 10 s that some (or all) tasks stalled on the resource.
    parts = [f"{kind} {figures[f'{kind}_avg10']:.2f}%" for kind in ("some", "full")
             if f"{kind}_avg10" in figures]
    return (", ".join(parts) + " of the last 10 s") if parts else "-"


def prune(manager: ContainerManager) -> list[str]:
    """Remove ended containers and every kernel resource of nsmagic whose owner is gone."""
    done = []
    for managed in manager.all():
        if managed.state == "exited":
            manager.remove(managed.name)
            done.append(f"removed container {managed.name}")
    try:
        from nsmagic.cgroups import prune_orphans

        done += [f"removed orphaned cgroup {name}" for name in prune_orphans()]
    except OSError as error:
        done.append(f"cgroups not pruned: {error}")
    done += _prune_links()
    return done or ["nothing to prune"]


def _prune_links() -> list[str]:
    from nsmagic.isolation import network

    removed = []
    try:
        found = network.bridges()
    except Exception as error:  # noqa: BLE001 - no netlink access (unprivileged): say so
        return [f"network links not checked: {error}"]
    for bridge in found:
        if bridge.owner_pid is not None and not pid_alive(bridge.owner_pid):
            try:
                network.delete_link(bridge.name)
                removed.append(f"removed orphaned bridge {bridge.name}")
            except Exception as error:  # noqa: BLE001
                removed.append(f"bridge {bridge.name} not removed: {error}")
    return removed
