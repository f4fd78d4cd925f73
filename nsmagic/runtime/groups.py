"""Named cgroups of one process (a notebook kernel): create, change, show and remove them."""

from __future__ import annotations

import atexit
import html
import os
import threading
from dataclasses import dataclass, field
from typing import Any

from nsmagic.cgroups import NAME_PREFIX, Cgroup, CgroupDriver, CgroupStats, detect_driver
from nsmagic.cgroups import prune_orphans as _prune_orphans
from nsmagic.cgroups.limits import Limits, format_size
from nsmagic.errors import SpecError
from nsmagic.runtime.spec import validate_name
from nsmagic.tables import html_table, text_table

# The groups this process created, by the short name the user gave. The drivers name them
# nsmagic-<our pid>-<name> under our own cgroup, so the fork server (whose driver uses our pid
# as owner) opens the same directories, and prune_orphans finds them once we are dead.
_groups: dict[str, Cgroup] = {}
_lock = threading.Lock()
_driver: CgroupDriver | None = None
_owner_pid: int | None = None
_atexit_registered = False

RLIMIT_NOTE = (
    "this host has no writable cgroup, so the group's limits are per-process rlimits: a "
    "container run in it gets a copy of them, and its usage is not counted in the group."
)


def driver() -> CgroupDriver:
    """The cgroup driver of this process (detected once; a forked child detects its own)."""
    global _driver, _owner_pid
    if _driver is None or _owner_pid != os.getpid():
        _driver = detect_driver()
        _owner_pid = os.getpid()
        _groups.clear()  # a forked child owns none of its parent's groups
    return _driver


def is_approximate() -> bool:
    """True when groups are only rlimit approximations (no writable cgroup filesystem)."""
    return driver().name == "rlimit"


def check_name(name: str) -> str:
    """Return name if it can name a group: one sentence as SpecError otherwise."""
    validate_name(name, "cgroup name")
    if name.startswith(NAME_PREFIX):
        raise SpecError(
            f"cgroup name {name!r} starts with {NAME_PREFIX!r}: give the short name, nsmagic "
            "adds that prefix and the kernel's pid itself."
        )
    return name


def create(name: str, limits: Limits | None = None) -> Cgroup:
    """Create the group `name` with limits; SpecError if it exists or a limit is refused."""
    check_name(name)
    chosen = driver()
    with _lock:
        if name in _groups:
            raise SpecError(f"a cgroup named {name!r} already exists; %cgroup set changes it.")
        group = chosen.create(name, limits or Limits())
        _groups[name] = group
        _register_atexit()
    return group


def get(name: str) -> Cgroup:
    """The group `name` created by this process; SpecError when there is none."""
    check_name(name)
    driver()
    group = _groups.get(name)
    if group is None:
        known = ", ".join(sorted(_groups)) or "none yet"
        raise SpecError(
            f"there is no cgroup named {name!r} (this kernel's groups: {known}); create it "
            f"with %cgroup create {name}."
        )
    if group.driver != "rlimit":
        try:
            driver().open(name)
        except KeyError:
            _groups.pop(name, None)
            raise SpecError(
                f"the cgroup {name!r} no longer exists (something else removed "
                f"{group.name}); create it again with %cgroup create {name}."
            ) from None
    return group


def set_limits(name: str, limits: Limits) -> Cgroup:
    """Change the given limits of group `name` (unset fields stay as they are)."""
    group = get(name)
    if limits.is_empty():
        raise SpecError("give at least one limit to set, e.g. --memory 256M or --cpus 0.5.")
    group.apply(limits)
    return group


def remove(name: str) -> str:
    """Kill what runs in group `name` and delete it; returns its full name."""
    group = get(name)
    with _lock:
        group.remove()
        _groups.pop(name, None)
    return group.name


def remove_all() -> list[str]:
    """Remove every group this process created (the extension's unload and atexit call it)."""
    if _owner_pid != os.getpid():
        return []  # a forked child must not remove its parent's groups
    removed = []
    for name in sorted(_groups):
        group = _groups.pop(name)
        try:
            group.remove()
        except Exception:  # noqa: BLE001 - remove the others; prune finds this one later
            continue
        removed.append(group.name)
    return removed


def names() -> list[str]:
    """Short names of the groups this process created."""
    driver()
    return sorted(_groups)


def prune_orphans() -> list[str]:
    """Remove groups (of any nsmagic kernel) whose owning process is dead; their names."""
    return _prune_orphans(driver())


def container_options(name: str) -> tuple[dict[str, Any], list[str]]:
    """How a container runs in group `name`: ContainerSpec.build keywords, and notes for the user.

    With real cgroups that is cgroup=name (the fork server opens the same group). The rlimit
    driver's groups live only in this process, so the container gets a copy of the limits.
    """
    group = get(name)
    if group.driver == "rlimit":
        limits = group.limits()
        return {"limits": limits}, [
            f"cgroup {name} has no kernel cgroup on this host: its limits "
            f"({limits.describe()}) are applied as per-process rlimits in the container."
        ]
    return {"cgroup": name}, []


# -- reports ------------------------------------------------------------------------------
def report(name: str) -> GroupReport:
    """Limits and a fresh usage sample of group `name`."""
    group = get(name)
    notes = list(group.approximations())
    if group.driver == "rlimit":
        notes.insert(0, RLIMIT_NOTE)
    return GroupReport(name, group.name, group.driver, group.limits(), group.stats(), notes)


def table() -> GroupTable:
    """One report per group of this process, for %cgroup ls."""
    return GroupTable([report(name) for name in names()], driver().name)


def _seconds(ns: int | None) -> str:
    return "n/a" if ns is None else f"{ns / 1e9:.3f} s"


def _size(value: int | None, unlimited: str = "n/a") -> str:
    return unlimited if value is None else format_size(value)


@dataclass
class GroupReport:
    """What %cgroup show displays: a group's limits and one usage sample, as rows."""

    name: str
    full_name: str
    driver: str
    limits: Limits
    stats: CgroupStats
    notes: list[str] = field(default_factory=list)

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) pairs; 'n/a' where the driver or kernel cannot tell."""
        s = self.stats
        memory_limit = s.memory_limit if s.memory_limit is not None else self.limits.memory
        rows = [
            ("driver", f"cgroup {self.driver}" if self.driver != "rlimit"
             else "rlimit (limits approximated)"),
            ("limits", self.limits.describe()),
            ("cpu time", _seconds(s.cpu_usage_ns)),
            ("user / system", f"{_seconds(s.cpu_user_ns)} / {_seconds(s.cpu_system_ns)}"),
        ]
        if s.cpu_throttled_periods is None and s.cpu_throttled_ns is None:
            rows.append(("throttled", "n/a"))
        else:
            periods = "n/a" if s.cpu_periods is None else str(s.cpu_periods)
            rows.append(("throttled", f"{s.cpu_throttled_periods or 0} of {periods} periods, "
                                      f"{_seconds(s.cpu_throttled_ns or 0)}"))
        rows += [
            ("memory current", _size(s.memory_current)),
            ("memory peak", _size(s.memory_peak)),
            ("memory limit", _size(memory_limit, "unlimited")),
            ("swap", _size(s.swap_current)),
            ("oom events / kills", f"{_count(s.oom_events)} / {_count(s.oom_kills)}"),
            ("pids current", _count(s.pids_current)),
            ("pids limit", "unlimited" if s.pids_limit is None else str(s.pids_limit)),
        ]
        if s.pids_denied:
            rows.append(("forks refused", str(s.pids_denied)))
        for resource, values in sorted(s.pressure.items()):
            parts = [f"{kind} {values[f'{kind}_avg10']:.2f}%" for kind in ("some", "full")
                     if f"{kind}_avg10" in values]
            rows.append((f"{resource} pressure (avg10)", ", ".join(parts) or "n/a"))
        return rows

    def text(self) -> str:
        """Plain-text table."""
        rows = self.rows()
        width = max(len(label) for label, _ in rows)
        lines = [f"cgroup {self.name} ({self.full_name})"]
        lines += [f"  {label:<{width}}  {value}" for label, value in rows]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text()

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(self.text())

    def _repr_html_(self) -> str:
        body = "".join(f"<tr><th style='text-align:left'>{html.escape(label)}</th>"
                       f"<td style='text-align:left'>{html.escape(value)}</td></tr>"
                       for label, value in self.rows())
        notes = "".join(f"<li>{html.escape(note)}</li>" for note in self.notes)
        return (f"<div class='nsmagic-cgroup'><b>cgroup {html.escape(self.name)}</b> "
                f"<code>{html.escape(self.full_name)}</code><table>{body}</table>"
                + (f"<ul>{notes}</ul>" if notes else "") + "</div>")


def _count(value: int | None) -> str:
    return "n/a" if value is None else str(value)


@dataclass
class GroupTable:
    """What %cgroup ls displays: one line per group."""

    groups: list[GroupReport]
    driver: str

    HEADER = ("name", "limits", "memory current", "pids current", "cgroup")

    def rows(self) -> list[tuple[str, ...]]:
        """One tuple per group, in HEADER's order."""
        return [(g.name, g.limits.describe(), _size(g.stats.memory_current),
                 _count(g.stats.pids_current), g.full_name) for g in self.groups]

    def text(self) -> str:
        """Plain-text table (or a sentence when there is no group)."""
        if not self.groups:
            return "no cgroups yet: create one with %cgroup create NAME --memory 256M"
        lines = [text_table(self.HEADER, self.rows())]
        if self.driver == "rlimit":
            lines.append(f"note: {RLIMIT_NOTE}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text()

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(self.text())

    def _repr_html_(self) -> str:
        if not self.groups:
            return f"<p>{html.escape(self.text())}</p>"
        note = f"<p>{html.escape(RLIMIT_NOTE)}</p>" if self.driver == "rlimit" else ""
        return html_table(self.HEADER, self.rows(), "nsmagic-cgroups") + note


def _register_atexit() -> None:
    global _atexit_registered
    if not _atexit_registered:
        atexit.register(remove_all)
        _atexit_registered = True


__all__ = ["GroupReport", "GroupTable", "check_name", "container_options", "create", "driver",
           "get", "is_approximate", "names", "prune_orphans", "remove", "remove_all", "report",
           "set_limits", "table"]
