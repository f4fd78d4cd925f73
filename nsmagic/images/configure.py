"""Config-only instructions (ENV, WORKDIR, USER, CMD, ENTRYPOINT, LABEL, EXPOSE) applied to a
draft image, as a build step or as commit's changes (docker commit --change)."""

from __future__ import annotations

import posixpath
import re

from nsmagic.images.containerfile import CONFIG_ONLY, Instruction, pairs, words
from nsmagic.images.draft import Draft

_PORT = re.compile(r"[0-9]{1,5}(?:-[0-9]{1,5})?(?:/(?:tcp|udp|sctp))?")


def environment(draft: Draft) -> dict[str, str]:
    """The draft's Env as a mapping (what $VARIABLES in instructions expand to)."""
    found = {}
    for entry in draft.settings.get("Env") or []:
        key, _, value = str(entry).partition("=")
        found[key] = value
    return found


def working_directory(draft: Draft, instruction: Instruction) -> str:
    """WORKDIR's absolute path: a relative one goes on from the current WorkingDir."""
    given = words(instruction.arguments, environment(draft), split=False)
    path = given[0] if given else ""
    if not path:
        raise instruction.fail("needs a path")
    current = draft.settings.get("WorkingDir") or "/"
    return posixpath.normpath(posixpath.join(current, path))


def apply(draft: Draft, instruction: Instruction, *, cmd_inherited: bool = False) -> None:
    """Change the draft's config as the instruction says, with a history entry.
    cmd_inherited: Cmd came from the base image, so an ENTRYPOINT resets it (Docker's rule)."""
    keyword = instruction.keyword
    if keyword not in CONFIG_ONLY:
        raise instruction.fail("changes files, not the image's config: "
                               + ", ".join(CONFIG_ONLY) + " do")
    settings = draft.settings
    env = environment(draft)
    if keyword == "ENV":
        current = dict(env)
        for key, value in pairs(instruction, env):
            current[key] = value
        settings["Env"] = [f"{key}={value}" for key, value in current.items()]
    elif keyword == "LABEL":
        labels = dict(settings.get("Labels") or {})
        labels.update(pairs(instruction, env))
        settings["Labels"] = labels
    elif keyword == "USER":
        user = words(instruction.arguments, env)
        if len(user) != 1:
            raise instruction.fail(f"takes one NAME[:GROUP] or UID[:GID], not "
                                   f"{instruction.arguments!r}")
        settings["User"] = user[0]
    elif keyword == "WORKDIR":
        settings["WorkingDir"] = working_directory(draft, instruction)
    elif keyword == "CMD":
        settings["Cmd"] = instruction.command()
    elif keyword == "ENTRYPOINT":
        settings["Entrypoint"] = instruction.command()
        if cmd_inherited:
            settings.pop("Cmd", None)
    elif keyword == "EXPOSE":
        ports = dict(settings.get("ExposedPorts") or {})
        for port in words(instruction.arguments, env):
            if not _PORT.fullmatch(port):
                raise instruction.fail(f"takes PORT[/tcp|udp|sctp], not {port!r}")
            ports[port if "/" in port else f"{port}/tcp"] = {}
        settings["ExposedPorts"] = ports
    draft.note_change(str(instruction))
