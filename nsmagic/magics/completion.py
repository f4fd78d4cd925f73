"""Tab completion of %%container, %container and %cgroup through IPython's completer: their
options, subcommands, and the names of containers, groups and notebook variables."""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable
from typing import Any

from IPython.core.completer import (
    CompletionContext,
    SimpleCompletion,
    SimpleMatcherResult,
    context_matcher,
)

from nsmagic.magics.cgroup import PARSERS, SUBCOMMANDS
from nsmagic.magics.container import (
    CELL_ONLY_OPTIONS,
    SHELLS,
    ContainerMagics,
    subcommands,
)
from nsmagic.runtime import groups
from nsmagic.runtime.named import MANAGER

# The values some options take; options of paths (--rootfs, --volume, --export-oci) are left
# to IPython's own file completion.
NET_MODES = ("none", "bridge", "host")
SECURITY_OPTS = ("seccomp=unconfined", "seccomp=default", "no-new-privileges")
# %container subcommands that take a container's name first, and which names they take.
_ALL, _RUNNING, _AGENTS = "all", "running", "agents"
NAME_ARGUMENT = {"logs": _ALL, "stats": _ALL, "wait": _ALL, "stop": _RUNNING, "rm": _ALL,
                 "export": _ALL}
SUBCOMMAND_FLAGS = {"logs": ("-f",), "rm": ("-f",), "export": ("--oci", "--bundle-root")}


def _flags(parser: Any) -> list[str]:
    """Every option string of an argparse parser."""
    return [flag for action in parser._actions for flag in action.option_strings]


def _value_options(parser: Any) -> set[str]:
    """The option strings of a parser that take a value (the next word is not a flag)."""
    return {flag for action in parser._actions if action.nargs != 0
            for flag in action.option_strings}


def container_names(which: str = _ALL) -> list[str]:
    """Names of this kernel's containers: all, the running ones, or the running named
    containers (those a cell can run in)."""
    kept = MANAGER.all()
    if which == _RUNNING:
        kept = [c for c in kept if c.state == "running"]
    elif which == _AGENTS:
        kept = [c for c in kept if c.state == "running" and c.kind == "agent"]
    return [c.name for c in kept]


def _words(text: str) -> tuple[list[str], str]:
    """The words before the cursor and the one being typed ('' after a space)."""
    try:
        words = shlex.split(text)
    except ValueError:  # an open quote: complete the rest as plain words
        words = text.split()
    if text and not text[-1].isspace() and words:
        return words[:-1], words[-1]
    return words, ""


def _option_value(option: str, variables: Iterable[str]) -> list[str]:
    """What may follow an option that takes a value."""
    if option == "--net":
        return [*NET_MODES, *(f"container:{n}" for n in container_names(_RUNNING))]
    if option == "--cgroup":
        return groups.names()
    if option == "--security-opt":
        return list(SECURITY_OPTS)
    if option == "--in":
        return [v for v in variables if v.isidentifier() and not v.startswith("_")]
    return []


def _cell_options(before: list[str], word: str, variables: Iterable[str]) -> list[str]:
    """%%container's options, their values, or a named container and then a shell."""
    parser = ContainerMagics.container.parser
    takes_value = _value_options(parser)
    if before and before[-1] in takes_value:
        return _option_value(before[-1], variables)
    if word.startswith("-"):
        return _flags(parser)
    positional = [w for i, w in enumerate(before)
                  if not w.startswith("-") and not (i and before[i - 1] in takes_value)]
    if not positional:
        return [*container_names(_AGENTS), *SHELLS]
    if len(positional) == 1 and positional[0] not in SHELLS:
        return list(SHELLS)
    return []


def _start_options(before: list[str], word: str, variables: Iterable[str]) -> list[str]:
    """%container start NAME's options: those of a container, not a cell's."""
    parser = ContainerMagics.container.parser
    if before and before[-1] in _value_options(parser):
        return _option_value(before[-1], variables)
    if not word.startswith("-"):
        return []
    refused = {*CELL_ONLY_OPTIONS, "--shell"}
    return [flag for action in parser._actions if not refused & set(action.option_strings)
            for flag in action.option_strings]


def _container_line(before: list[str], word: str, variables: Iterable[str]) -> list[str]:
    """%container SUBCOMMAND ...: subcommands, then names, flags or start's options."""
    if not before:
        return subcommands(ContainerMagics)
    command, rest = before[0], before[1:]
    if command == "start":
        return _start_options(rest, word, variables) if rest else []
    flags = SUBCOMMAND_FLAGS.get(command, ())
    if word.startswith("-"):
        return list(flags)
    if command == "export" and rest and rest[-1] == "--bundle-root":
        return ["bind", "busybox"]
    if command == "dashboard":
        return [n for n in container_names() if n not in rest]
    if command in NAME_ARGUMENT and not [w for w in rest if w not in flags]:
        return container_names(NAME_ARGUMENT[command])
    return []


def _cgroup_line(before: list[str], word: str) -> list[str]:
    """%cgroup SUBCOMMAND ...: subcommands, a group's name, then the subcommand's options."""
    if not before:
        return list(SUBCOMMANDS)
    command, rest = before[0], before[1:]
    if command not in PARSERS or "--" in rest:
        return []  # after --: a host command, which IPython's file completion serves
    if word.startswith("-"):
        return _flags(PARSERS[command].parser)
    if command != "create" and command != "ls" and not rest:
        return groups.names()
    return []


def candidates(line: str, variables: Iterable[str] = ()) -> tuple[str, list[str]] | None:
    """(the word being typed, what may replace it) for a line of our magics up to the
    cursor, or None when the line is not one of theirs."""
    magic, _, text = line.lstrip().partition(" ")
    if not _:
        return None  # still typing the magic's own name: IPython completes that
    before, word = _words(text)
    if magic == "%%container":
        found = _cell_options(before, word, variables)
    elif magic == "%container":
        found = _container_line(before, word, variables)
    elif magic == "%cgroup":
        found = _cgroup_line(before, word)
    else:
        return None
    return word, [c for c in dict.fromkeys(found) if c.startswith(word)]


def matcher_for(shell: Any) -> Callable[[CompletionContext], SimpleMatcherResult]:
    """An IPython completion matcher (API v2) of our magics for this shell."""

    @context_matcher(identifier="nsmagic.magics", priority=50)
    def nsmagic_matcher(context: CompletionContext) -> SimpleMatcherResult:
        line = context.text_until_cursor
        # %%container is a cell magic: only its first line has options.
        if line.lstrip().startswith("%%") and context.cursor_line != 0:
            return SimpleMatcherResult(completions=[], suppress=False)
        found = candidates(line, getattr(shell, "user_ns", {}) or {})
        if found is None:
            return SimpleMatcherResult(completions=[], suppress=False)
        word, texts = found
        return SimpleMatcherResult(
            completions=[SimpleCompletion(text, type="param") for text in texts],
            matched_fragment=word, suppress=bool(texts), ordered=True)

    return nsmagic_matcher


def install(shell: Any) -> Callable[[], None]:
    """Add our matcher to the shell's completer; returns the function that removes it."""
    completer = getattr(shell, "Completer", None)
    if completer is None:  # a shell without a completer (some embedded ones)
        return lambda: None
    matcher = matcher_for(shell)
    completer.custom_matchers.append(matcher)

    def uninstall() -> None:
        if matcher in completer.custom_matchers:
            completer.custom_matchers.remove(matcher)

    return uninstall


__all__ = ["candidates", "container_names", "install", "matcher_for"]
