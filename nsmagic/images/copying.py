"""COPY of a build: files of the build context (the notebook's folder) as a layer's entries.

Only what is inside the context is copied: a source path (after its symbolic links are
followed) that leads outside it is refused, and symbolic links inside a copied directory are
copied as links, never followed. The destination is resolved through the image's own symbolic
links (COPY x /bin/ in an image whose /bin links to usr/bin lands in /usr/bin), so the layer
never hides a link of the image behind a directory. New files are root's unless --chown says
otherwise, as Docker's.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import posixpath
import stat
from dataclasses import dataclass

from nsmagic.errors import SpecError
from nsmagic.images.containerfile import Instruction, words
from nsmagic.images.layerwrite import Item
from nsmagic.images.lower import LowerView

MAX_LINKS = 40  # as the kernel's limit on symbolic links followed in one lookup


@dataclass
class CopyPlan:
    """The layer's entries of one COPY and the digest of what they hold (its cache key)."""

    items: list[Item]
    digest: str


def resolve(lower: LowerView, path: str) -> str:
    """An absolute path of the image with the image's symbolic links on the way followed
    (as the container would see it); relative, without the leading '/'."""
    pending = [p for p in path.split("/") if p]
    resolved: list[str] = []
    hops = 0
    while pending:
        part = pending.pop(0)
        if part == ".":
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = "/".join([*resolved, part])
        info, source = lower.find(candidate)
        if info is not None and source is not None and stat.S_ISLNK(info.st_mode):
            hops += 1
            if hops > MAX_LINKS:
                raise SpecError(f"{path} goes through more than {MAX_LINKS} symbolic links "
                                "in the image")
            target = os.readlink(source)
            if target.startswith("/"):
                resolved = []
            pending = [p for p in target.split("/") if p] + pending
            continue
        resolved.append(part)
    return "/".join(resolved)


def _ids(lower: LowerView, text: str, instruction: Instruction) -> tuple[int, int]:
    """--chown USER[:GROUP], by number or by the image's /etc/passwd and /etc/group."""
    user, _, group = text.partition(":")

    def number(name: str, database: str, field: int) -> int:
        if name.isdigit():
            return int(name)
        content = lower.read(f"etc/{database}") or b""
        for line in content.decode("utf-8", "replace").splitlines():
            parts = line.split(":")
            if len(parts) > field and parts[0] == name and parts[field].isdigit():
                return int(parts[field])
        raise instruction.fail(f"--chown names {name!r}, which the image's /etc/{database} "
                               "does not have")

    uid = number(user, "passwd", 2)
    if group:
        gid = number(group, "group", 2)
    elif user.isdigit():
        gid = uid
    else:
        gid = number(user, "passwd", 3)
    return uid, gid


def _options(instruction: Instruction, env: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """COPY's --chown and --chmod, then its SOURCE... DESTINATION (a JSON array or words)."""
    rest = instruction.arguments.strip()
    options = {}
    while rest.startswith("--"):
        flag, _, rest = rest.partition(" ")
        rest = rest.strip()
        option, _, value = flag[2:].partition("=")
        if option == "from":
            raise instruction.fail("--from needs another build stage: multi-stage builds are "
                                   "not supported")
        if option not in ("chown", "chmod") or not value:
            raise instruction.fail(f"takes --chown=USER[:GROUP] and --chmod=MODE, not {flag}")
        options[option] = words(value, env, split=False)[0] if value else value
    form = Instruction(instruction.keyword, rest, instruction.line).exec_form()
    arguments = form if form is not None else words(rest, env)
    if len(arguments) < 2:
        raise instruction.fail("takes SOURCE... DESTINATION")
    return options, arguments


def plan(instruction: Instruction, context: str, lower: LowerView, working_dir: str,
         env: dict[str, str]) -> CopyPlan:
    """The entries of a COPY (sources relative to the context, a destination in the image)."""
    options, arguments = _options(instruction, env)
    *sources, destination = arguments
    root = os.path.realpath(context)
    uid, gid = _ids(lower, options["chown"], instruction) if "chown" in options else (0, 0)
    mode = None
    if "chmod" in options:
        try:
            mode = int(options["chmod"], 8)
        except ValueError:
            raise instruction.fail(f"--chmod takes an octal mode, not {options['chmod']!r}") \
                from None
    found: list[str] = []
    for source in sources:
        pattern = os.path.join(root, source.lstrip("/"))
        matches = sorted(glob.glob(pattern)) if glob.has_magic(source) else [pattern]
        if not matches or not all(os.path.lexists(m) for m in matches):
            raise instruction.fail(f"copies {source!r}, which is not in the build context "
                                   f"{root}")
        for match in matches:
            real = os.path.realpath(match)
            if os.path.commonpath([real, root]) != root:
                raise instruction.fail(f"copies {source!r}, which leads outside the build "
                                       f"context {root}: only its own files can be copied")
            found.append(real)
    target = posixpath.join(working_dir or "/", destination)
    into_directory = (destination.endswith("/") or len(found) > 1
                      or any(os.path.isdir(f) for f in found)
                      or lower.is_directory(resolve(lower, target)))
    base = resolve(lower, target)
    items: list[Item] = []
    made: set[str] = set()

    def parents_of(path: str) -> None:
        parts = path.split("/")[:-1]
        for index in range(1, len(parts) + 1):
            directory = "/".join(parts[:index])
            if directory not in made and not lower.is_directory(directory):
                items.append(Item(directory, "directory", uid=uid, gid=gid))
                made.add(directory)
                if lower.lookup(directory) is not None:
                    raise instruction.fail(f"copies into /{directory}, which is a file in "
                                           "the image")

    def add(path: str, source: str) -> None:
        parents_of(path)
        is_directory = os.path.isdir(source) and not os.path.islink(source)
        if is_directory:
            made.add(path)
        items.append(Item(path, "entry", source, uid=uid, gid=gid,
                          mode=mode if mode is not None else None))

    for source in found:
        if os.path.isdir(source):
            if into_directory and base and base not in made:
                parents_of(base + "/x")
            for directory, subdirectories, names in os.walk(source):
                subdirectories.sort()
                relative = os.path.relpath(directory, source)
                here = base if relative == "." else posixpath.join(base, relative)
                if relative != "." and here:
                    add(here, directory)
                linked = [d for d in subdirectories if os.path.islink(os.path.join(directory,
                                                                                  d))]
                subdirectories[:] = [d for d in subdirectories if d not in linked]
                for name in sorted(names + linked):
                    add(posixpath.join(here, name), os.path.join(directory, name))
        else:
            add(posixpath.join(base, os.path.basename(source)) if into_directory else base,
                source)
    if not base and not into_directory:
        raise instruction.fail("needs a destination file, not the image's root")
    return CopyPlan(items, _digest(items))


def _digest(items: list[Item]) -> str:
    """What the copied entries hold, as Docker's build cache keys COPY (times left out)."""
    summary = hashlib.sha256()
    for item in items:
        content = ""
        if item.source is not None:
            info = os.lstat(item.source)
            if stat.S_ISLNK(info.st_mode):
                content = "link:" + os.readlink(item.source)
            elif stat.S_ISREG(info.st_mode):
                content = "file:" + _file_digest(item.source)
            mode = item.mode if item.mode is not None else stat.S_IMODE(info.st_mode)
        else:
            mode = item.mode or 0o755
        summary.update(json.dumps([item.path, item.kind, mode, item.uid, item.gid, content])
                       .encode() + b"\n")
    return "sha256:" + summary.hexdigest()


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    except PermissionError:
        raise SpecError(f"COPY cannot read {path}: this user may not read it") from None
    return digest.hexdigest()
