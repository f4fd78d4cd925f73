"""An image's config: what a runtime honours (Env, WorkingDir, User, Entrypoint, Cmd, Labels)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nsmagic.images import digests
from nsmagic.images.errors import ImageError
from nsmagic.images.manifest import load_json


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    if isinstance(value, str):  # a shell-form Cmd written by hand
        return ("/bin/sh", "-c", value)
    return ()


def _string(value: Any) -> str:
    return value if isinstance(value, str) else ""


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an OCI image config a container starts from; raw is the whole document."""

    env: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    os: str = "linux"
    architecture: str = ""
    diff_ids: tuple[str, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def environment(self) -> dict[str, str]:
        """Env as a mapping (a later entry of one name wins, as Docker's does)."""
        found = {}
        for entry in self.env:
            key, _, value = entry.partition("=")
            found[key] = value
        return found

    @property
    def command(self) -> tuple[str, ...]:
        """What the image runs by default: Entrypoint followed by Cmd."""
        return self.entrypoint + self.cmd


def parse(data: bytes, where: str) -> ImageConfig:
    """An image config from its blob; every diff_id checked, since each names a directory."""
    document = load_json(data, where)
    rootfs = document.get("rootfs")
    if not isinstance(rootfs, dict) or not isinstance(rootfs.get("diff_ids"), list):
        raise ImageError(f"{where} is not an image config: it has no rootfs.diff_ids")
    diff_ids = tuple(rootfs["diff_ids"])
    for diff_id in diff_ids:
        digests.hex_of(diff_id, where)
    container = document.get("config") or {}
    if not isinstance(container, dict):
        container = {}
    labels = container.get("Labels") or {}
    return ImageConfig(
        env=_strings(container.get("Env")),
        working_dir=_string(container.get("WorkingDir")),
        user=_string(container.get("User")),
        entrypoint=_strings(container.get("Entrypoint")),
        cmd=_strings(container.get("Cmd")),
        labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
        os=str(document.get("os") or "linux"),
        architecture=str(document.get("architecture") or ""),
        diff_ids=diff_ids,
        raw=document,
    )
