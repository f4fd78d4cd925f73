"""Cheap repeated samples of kernel cgroups: interface files kept open, re-read with pread.

A sampler thread reads every container's usage several times a second, so a sample must cost
next to nothing. kernfs regenerates a file's content on each read from offset 0, so a file
opened once and re-read with `os.pread(fd, n, 0)` gives a fresh value for one system call:
no open/close, no path building, no parsing of large files such as memory.stat.

Each controller module that has live figures declares the files it needs (`SAMPLED`) and
parses them in `sample(files, record, limits)`; `FileStatsReader` opens those files once per
group and calls the modules in turn.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import ModuleType

from nsmagic.cgroups.base import LIMIT_FIELDS, CgroupStats, StatsReader

# Interface files are small; a read of this size gets all of one in one call.
READ_SIZE = 4096


def flat_value(data: bytes, key: bytes) -> int | None:
    """The value of one 'key value' line of a flat-keyed file (cpu.stat, memory.events).

    Cheaper than parsing every line: one search, and the key must start a line (so b'oom'
    does not match 'oom_kill'). None when the key is absent.
    """
    needle = key + b" "
    at = data.find(needle)
    while at > 0 and data[at - 1] != 10:  # 10 is ord("\n")
        at = data.find(needle, at + 1)
    if at < 0:
        return None
    end = data.find(b"\n", at)
    return int(data[at + len(needle): end if end >= 0 else None])


class KeptFiles:
    """Some interface files of one cgroup directory, opened once and re-read with pread.

    A file missing when opened (its controller or kernel lacks it, e.g. memory.peak before
    5.19) reads as None. Once the group is removed, reads raise OSError (ENODEV).
    """

    def __init__(self, directory: Path | str, names: Iterable[str]) -> None:
        self.directory = str(directory)
        self.fds: dict[str, int] = {}
        try:
            for name in names:
                try:
                    path = os.path.join(self.directory, name)
                    self.fds[name] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue
        except BaseException:
            self.close()
            raise

    def read(self, name: str) -> bytes | None:
        """The file's current content (None when it was not there to open)."""
        fd = self.fds.get(name)
        return None if fd is None else os.pread(fd, READ_SIZE, 0)

    def read_int(self, name: str) -> int | None:
        """An integer file; None when absent, empty or 'max' (as _fs.read_int)."""
        fd = self.fds.get(name)  # not through read(): this runs several times a sample
        if fd is None:
            return None
        data = os.pread(fd, READ_SIZE, 0).strip()
        if not data or data == b"max":
            return None
        return int(data)

    def close(self) -> None:
        """Close every descriptor; safe twice."""
        fds, self.fds = self.fds, {}
        for fd in fds.values():
            try:
                os.close(fd)
            except OSError:
                pass


class FileStatsReader(StatsReader):
    """A StatsReader over (directory, controller module) pairs whose files stay open.

    Each read fills only the live figures the modules' sample() functions read (usage,
    throttling, memory, OOM kills): a subset of Cgroup.stats(). Limits are re-read every
    limits_every reads (they change only when someone applies new ones) and repeated in
    between. Raises FileNotFoundError when none of the files could be opened.
    """

    def __init__(self, cgroup: object, parts: Sequence[tuple[Path, ModuleType]],
                 limits_every: int = 1) -> None:
        self.cgroup = cgroup
        self.limits_every = max(1, int(limits_every))
        self.reads = 0
        self.last_limits: list[tuple[str, int | None]] = []
        # (its files, the controller's sample function) per controller module.
        self.parts: list[tuple[KeptFiles, Callable[[KeptFiles, CgroupStats, bool], None]]] = []
        try:
            for directory, module in parts:
                self.parts.append((KeptFiles(directory, module.SAMPLED), module.sample))
        except BaseException:
            self.close()
            raise
        if not any(files.fds for files, _ in self.parts):
            self.close()
            raise FileNotFoundError(f"no interface file of {cgroup} could be opened")

    def read(self) -> CgroupStats:
        """One sample; OSError once the group is gone."""
        record = CgroupStats(time.time())
        limits = self.reads % self.limits_every == 0
        self.reads += 1
        for files, sample in self.parts:
            sample(files, record, limits)
        if limits:
            self.last_limits = [(name, getattr(record, name)) for name in LIMIT_FIELDS]
        else:
            for name, value in self.last_limits:
                setattr(record, name, value)
        return record

    def close(self) -> None:
        """Close every kept file; safe twice."""
        for files, _ in self.parts:
            files.close()


__all__ = ["FileStatsReader", "KeptFiles", "flat_value"]
