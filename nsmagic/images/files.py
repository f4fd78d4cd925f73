"""Files written atomically (temporary, fsync, rename), trees removed whole, sizes on disk."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import stat
import tempfile

_libc = ctypes.CDLL(None, use_errno=True)


def fsync_dir(path: str) -> None:
    """Make a rename or an unlink in directory path durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def syncfs(path: str) -> None:
    """Flush the whole file system path lives on: one call instead of an fsync per file of an
    unpacked layer (thousands of them), before the layer is renamed into place."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), path)
    finally:
        os.close(fd)


def write_atomic(path: str, data: bytes, mode: int = 0o644) -> None:
    """path holds data, or what it held before: never a part of data."""
    directory = os.path.dirname(path)
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=f".{os.getpid()}")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.rename(temporary, path)
    except BaseException:
        unlink_quietly(temporary)
        raise
    fsync_dir(directory)


def unlink_quietly(path: str) -> None:
    """Remove a file that may already be gone."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def remove_tree(path: str) -> None:
    """Remove a directory tree, including read-only directories an unprivileged user unpacked
    (a layer may hold 0555 directories, which block the removal of what is inside them)."""

    def make_writable_and_retry(function, failed, excinfo):  # noqa: ANN001
        error = excinfo[1] if isinstance(excinfo, tuple) else excinfo
        if not isinstance(error, PermissionError):
            if isinstance(error, FileNotFoundError):
                return
            raise error
        parent = os.path.dirname(failed)
        os.chmod(parent, stat.S_IMODE(os.lstat(parent).st_mode) | stat.S_IRWXU)
        if os.path.isdir(failed) and not os.path.islink(failed):
            os.chmod(failed, stat.S_IMODE(os.lstat(failed).st_mode) | stat.S_IRWXU)
            shutil.rmtree(failed, onerror=make_writable_and_retry)
        else:
            function(failed)

    try:
        shutil.rmtree(path, onerror=make_writable_and_retry)
    except FileNotFoundError:
        pass


def remove_any(path: str) -> None:
    """Remove whatever is at path (a file, a link or a tree), if anything."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        remove_tree(path)
    else:
        unlink_quietly(path)


def disk_usage(path: str) -> int:
    """Bytes a file or tree takes on disk (allocated blocks, each inode counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [path]
    while stack:
        current = stack.pop()
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            continue
        key = (info.st_dev, info.st_ino)
        if key not in seen:
            seen.add(key)
            total += info.st_blocks * 512
        if stat.S_ISDIR(info.st_mode):
            try:
                with os.scandir(current) as entries:
                    stack.extend(entry.path for entry in entries)
            except PermissionError:
                continue
    return total


def is_no_space(error: BaseException) -> bool:
    """Whether an error means the file system is full (or the quota is)."""
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)
