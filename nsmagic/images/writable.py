"""A container's writable layer on the store's disk (upper/ and work/ of its overlay), where
diff and commit can read it while the container runs, and a build after it ended.

Its directory holds an `owner` file its creating process keeps a shared flock on: the kernel
drops the flock however that process ends, so prune knows a layer nobody holds any more and
removes it (as a lease, see leases.py).
"""

from __future__ import annotations

import fcntl
import os
import shutil

from nsmagic.images.store import Store


class WritableLayer:
    """upper/ and work/ of one container's overlay; remove() is safe twice."""

    def __init__(self, path: str, fd: int | None) -> None:
        self.path = path
        self._fd = fd
        self._pid = os.getpid()

    @property
    def upper(self) -> str:
        """What the container changed (overlayfs's own format: 0/0 character devices for
        deletions, an opaque attribute on replaced directories)."""
        return os.path.join(self.path, "upper")

    @property
    def work(self) -> str:
        return os.path.join(self.path, "work")

    @classmethod
    def create(cls, store: Store, container_id: str) -> WritableLayer:
        """A new, empty layer for container_id, held by this process."""
        containers = store.open().path("containers")
        directory = os.path.join(containers, container_id)
        # Made under a hidden name and renamed once held, so prune never sees it unheld.
        making = os.path.join(containers, f".new-{container_id}")
        os.makedirs(os.path.join(making, "upper"), mode=0o755)
        os.mkdir(os.path.join(making, "work"), 0o700)
        fd = os.open(os.path.join(making, "owner"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                     0o644)
        fcntl.flock(fd, fcntl.LOCK_SH)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.rename(making, directory)
        return cls(directory, fd)

    def remove(self) -> None:
        """Delete the layer (this process's, not a forked child's)."""
        fd, self._fd = self._fd, None
        if fd is None or os.getpid() != self._pid:
            return
        remove_tree(self.path)
        os.close(fd)


def remove_tree(path: str) -> None:
    """rmtree that also removes overlayfs's work/work (mode 000, made by the kernel)."""
    def allow_and_retry(function, failed, _info) -> None:  # noqa: ANN001
        parent = os.path.dirname(failed)
        os.chmod(parent, 0o700)
        if os.path.isdir(failed) and not os.path.islink(failed):
            os.chmod(failed, 0o700)
            shutil.rmtree(failed, ignore_errors=True)
        else:
            function(failed)

    shutil.rmtree(path, onerror=allow_and_retry)


def stale(store: Store) -> list[str]:
    """Remove the writable layers whose process has ended; their paths."""
    directory = store.path("containers")
    removed = []
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        if name.startswith("."):
            continue  # being made
        path = os.path.join(directory, name)
        try:
            fd = os.open(os.path.join(path, "owner"), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # being created (or half removed): its maker comes back to it
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # held: its container runs
        finally:
            os.close(fd)
        remove_tree(path)
        removed.append(path)
    return removed
