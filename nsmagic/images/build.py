"""A Containerfile built into an image of the store, step by step, each step cached.

FROM takes an image (pulled if the store lacks it) or scratch; RUN runs in a container of the
previous step's image and its writable layer becomes the step's layer; COPY takes files of the
build context; WORKDIR also makes its directory when the image lacks it; ENV, USER, CMD,
ENTRYPOINT, LABEL and EXPOSE change the config alone. Each step's image is cached under its
parent's ID and its text (COPY: and what it copies), so a second build of the same file
executes nothing, and a changed instruction or copied file rebuilds from that step on.

Nothing is named before the last step succeeds: a failing step (or Ctrl-C) leaves no image
record; what earlier steps made stays in the cache, and unnamed blobs go at the next prune.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nsmagic.images import api, configure, copying, runstep
from nsmagic.images.buildcache import BuildCache, key
from nsmagic.images.commit import store_name
from nsmagic.images.containerfile import Instruction, parse, words
from nsmagic.images.draft import Draft, Written
from nsmagic.images.errors import ImageError
from nsmagic.images.layerwrite import Item, write_layer
from nsmagic.images.lower import LowerView
from nsmagic.images.progress import ProgressCallback
from nsmagic.images.store import LayerEntry, Store

Output = Callable[[str, str], None]  # (stream, text): stdout for steps and RUN's output
# While a RUN runs on an unnamed step image, the image has this name (and the build's pid),
# which the next build removes if its process is gone.
STEP_NAME = "localhost/nsmagic-build"


class BuildError(ImageError):
    """A build step failed; no image was named."""


@dataclass(frozen=True)
class Step:
    """One step of a build: its instruction, whether the cache had it, its image's ID."""

    number: int
    instruction: str
    cached: bool
    image_id: str


@dataclass
class BuildResult:
    """The image a build named, and its steps."""

    image: api.Image
    steps: list[Step] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def cached(self) -> int:
        return sum(1 for step in self.steps if step.cached)

    @property
    def executed(self) -> list[str]:
        """The instructions that ran (the cache did not have them)."""
        return [step.instruction for step in self.steps[1:] if not step.cached]

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(f"<BuildResult {self.image.name} {self.image.id[:19]}: "
                     f"{len(self.steps)} steps, {self.cached} cached, {self.seconds:.1f} s>")


@dataclass
class _Parent:
    """The image the next step starts from."""

    id: str
    layers: tuple[LayerEntry, ...]
    make_draft: Callable[[], Draft]
    name: str | None = None  # a record's name (the FROM image), else unnamed
    written: Written | None = None


def _layer_dirs(store: Store, layers: tuple[LayerEntry, ...]) -> list[str]:
    found = []
    for layer in layers:
        record = store.layer(layer.diff_id)
        if record is None:
            raise ImageError(f"the layer {layer.diff_id} is missing from the store "
                             f"{store.root} (pruned during the build?): build again")
        found.append(record.rootfs)
    return found


def _forget_stale_step_names(store: Store) -> None:
    for record in store.records():
        if not record.name.startswith(STEP_NAME + ":"):
            continue
        pid = record.name.rsplit(":", 1)[1].split("-")[0]
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            store.forget(record.name)
        except (PermissionError, ValueError):
            continue


class _Builder:
    def __init__(self, store: Store, context: str, output: Output,
                 progress: ProgressCallback | None, no_cache: bool,
                 run_options: dict[str, Any], runner: Callable[..., runstep.RunOutcome]
                 ) -> None:
        self.store = store
        self.context = context
        self.output = output
        self.progress = progress
        self.no_cache = no_cache
        self.run_options = run_options
        self.runner = runner
        self.cache = BuildCache(store)
        self.cmd_set = False
        self.platform: str | None = None  # FROM's, unless it names one

    def say(self, text: str) -> None:
        self.output("stdout", text + "\n")

    def base(self, instruction: Instruction) -> _Parent:
        arguments = words(instruction.arguments, {})
        platform = self.platform
        while arguments and arguments[0].startswith("--"):
            option, _, value = arguments.pop(0)[2:].partition("=")
            if option != "platform" or not value:
                raise instruction.fail(f"takes --platform=OS/ARCH and an image, not "
                                       f"--{option}")
            platform = value
        if len(arguments) not in (1, 3) or (len(arguments) == 3
                                            and arguments[1].lower() != "as"):
            raise instruction.fail("takes IMAGE [AS NAME]")
        reference = arguments[0]
        if reference == "scratch":
            return _Parent("scratch", (), Draft.scratch)
        try:
            image = api.get(reference, self.store)
        except ImageError:
            image = api.pull(reference, self.progress, platform=platform, store=self.store)
        record, config = image.record, image.config.raw
        return _Parent(image.id, record.layers, lambda: Draft.of(record, config),
                       name=image.name)

    def step(self, number: int, total: int, instruction: Instruction,
             parent: _Parent) -> tuple[_Parent, bool]:
        """The step's image (from the cache or made now) and whether it was cached."""
        text = str(instruction)
        plan = None
        if instruction.keyword == "COPY":
            draft = parent.make_draft()
            plan = copying.plan(instruction, self.context, self._lower(parent),
                                draft.settings.get("WorkingDir") or "/",
                                configure.environment(draft))
        step_key = key(parent.id, text, plan.digest if plan else "")
        cached = None if self.no_cache else self.cache.get(step_key)
        if cached is not None:
            self.say(f"--> Using cache {cached.id[7:19]}")
            return self._parent_of(cached), True
        draft = parent.make_draft()
        label = f"step {number}/{total} ({_short(text)})"
        if instruction.keyword == "RUN":
            self._run(instruction, parent, draft, label, number, total)
        elif instruction.keyword == "COPY":
            assert plan is not None
            draft.add_layer(write_layer(self.store, plan.items, label), text)
        elif instruction.keyword == "WORKDIR":
            self._workdir(instruction, parent, draft, label)
        else:
            configure.apply(draft, instruction, cmd_inherited=not self.cmd_set)
        written = draft.write(self.store)
        self.cache.put(step_key, written)
        self.say(f"--> {written.id[7:19]}")
        return self._parent_of(written), False

    def _parent_of(self, written: Written) -> _Parent:
        return _Parent(written.id, written.layers, written.draft, written=written)

    def _lower(self, parent: _Parent) -> LowerView:
        return LowerView(_layer_dirs(self.store, parent.layers), self.store.opaque_xattr)

    def _run(self, instruction: Instruction, parent: _Parent, draft: Draft, label: str,
             number: int, total: int) -> None:
        name = parent.name
        if name is None:
            assert parent.written is not None
            name = f"{STEP_NAME}:{os.getpid()}-{number}"
            self.store.save(parent.written.record(name, "a build step"))
        try:
            outcome = self.runner(self.store, name, instruction.command(), self.output,
                                  f"the layer of {label}", self.run_options)
        finally:
            if parent.name is None:
                self.store.forget(name)
        if outcome.layer is None:
            raise BuildError(f"{label} failed: {outcome.how}; the build stopped there and "
                             "named no image")
        draft.add_layer(outcome.layer, str(instruction))

    def _workdir(self, instruction: Instruction, parent: _Parent, draft: Draft,
                 label: str) -> None:
        path = configure.working_directory(draft, instruction)
        lower = self._lower(parent)
        resolved = copying.resolve(lower, path)
        parts = resolved.split("/") if resolved else []
        missing = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)
                   if not lower.is_directory("/".join(parts[:i]))]
        if not missing:
            configure.apply(draft, instruction)
            return
        if lower.lookup(missing[0]) is not None:
            raise instruction.fail(f"needs the directory /{missing[0]}, which is a file in "
                                   "the image")
        layer = write_layer(self.store, [Item(d, "directory") for d in missing], label)
        draft.settings["WorkingDir"] = path
        draft.add_layer(layer, str(instruction))


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def build(containerfile: str, ref: str, *, context: str = ".", output: Output | None = None,
          progress: ProgressCallback | None = None, no_cache: bool = False,
          run_options: dict[str, Any] | None = None, platform: str | None = None,
          runner: Callable[..., runstep.RunOutcome] = runstep.run) -> BuildResult:
    """Build the Containerfile's text into the image ref (NAME[:TAG]) of the default store
    (the runtime's: RUN's containers start from it). context: the directory COPY takes files
    from; output(stream, text) gets the steps and RUN's output as they come; progress: a
    pull's for FROM; run_options: container options of RUN (net, memory, cpus, pids, ...);
    platform: FROM's when it names none (OS/ARCH[/VARIANT])."""
    started = time.monotonic()
    name = store_name(ref)
    instructions = parse(containerfile)
    if not os.path.isdir(context):
        raise ImageError(f"the build context {context} is not a directory")
    store = Store().open()
    builder = _Builder(store, os.path.abspath(context), output or (lambda stream, text: None),
                       progress, no_cache, dict(run_options or {}), runner)
    builder.platform = platform
    total = len(instructions)
    steps = []
    with store.using():  # prune waits: step images have no record until the end
        _forget_stale_step_names(store)
        builder.say(f"STEP 1/{total}: {instructions[0]}")
        parent = builder.base(instructions[0])
        steps.append(Step(1, str(instructions[0]), True, parent.id))
        for number, instruction in enumerate(instructions[1:], 2):
            builder.say(f"STEP {number}/{total}: {instruction}")
            parent, cached = builder.step(number, total, instruction, parent)
            if instruction.keyword == "CMD":
                builder.cmd_set = True
            steps.append(Step(number, str(instruction), cached, parent.id))
        if parent.written is not None:
            record = parent.written.record(name, f"build of {os.path.abspath(context)}")
        else:
            base = api.get(parent.name or "", store) if parent.name else None
            if base is None:  # FROM scratch and nothing else
                parent = builder._parent_of(Draft.scratch().write(store))
                assert parent.written is not None
                record = parent.written.record(name, "build")
            else:
                record = dataclasses.replace(base.record, name=name, created=time.time(),
                                             source=f"build of {os.path.abspath(context)}")
        store.save(record)
    builder.say(f"COMMIT {name}")
    builder.say(f"--> {record.config[7:19]}")
    builder.say(f"Successfully tagged {name}")
    return BuildResult(api.Image(store, record), steps, time.monotonic() - started)
