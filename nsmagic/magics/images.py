"""%container pull | push | images | rmi | image-prune | diff | commit and %%container build:
the image commands of %container, as a mixin of ContainerMagics (whose container_line
dispatches the subcommand WORD to _container_WORD, a '-' read as '_'). IPython glue only:
parse, call nsmagic.images, show."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import threading
from typing import Any, NoReturn

from IPython.core.error import UsageError

from nsmagic.errors import NsmagicError, SpecError
from nsmagic.images.digests import short
from nsmagic.images.progress import Progress
from nsmagic.tables import html_table, text_table

# The subcommands this mixin adds to %container (container_line's tuple lists them too).
IMAGE_SUBCOMMANDS = ("pull", "push", "images", "rmi", "image-prune", "diff", "commit")


class ImageCommandError(Exception):
    """An image command failed (a registry, the store, a build step): one line, no
    traceback through nsmagic."""

    def _render_traceback_(self) -> list[str]:
        return [f"ImageError: {self}"]


class _Parser(argparse.ArgumentParser):
    """A subcommand's options; a mistake is IPython's one-line UsageError."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (usage: {self.format_usage().strip()})")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise UsageError((message or "").strip() or f"{self.prog}: see {self.prog}?")


def _parser(name: str, usage: str) -> _Parser:
    # argparse formats usage and prog with %: the magics' own % is written %% there.
    return _Parser(prog=f"%%container {name}", usage=usage.replace("%", "%%"), add_help=False)


def human(size: int) -> str:
    from nsmagic.images.cli import human as decimal

    return decimal(size)


def front_end() -> bool:
    """Whether a notebook front end shows widgets (a ZMQ kernel, not a terminal IPython)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return "ZMQ" in type(get_ipython()).__name__


class ProgressBars:
    """A bar per layer and step under the cell (ipywidgets), updated from the worker threads
    that pull and push call progress from: a widget's value is state sent to the front end,
    so it may change from any thread, and new rows join one box displayed up front."""

    def __init__(self, display: bool = True) -> None:
        from ipywidgets import VBox

        self.box = VBox()
        self.rows: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        if display:
            from IPython.display import display as show

            show(self.box)

    def __call__(self, progress: Progress) -> None:
        from ipywidgets import HBox, IntProgress, Label

        with self._lock:
            row = self.rows.get((progress.digest, progress.step))
            if row is None:
                bar = IntProgress(min=0, max=max(progress.total, 1),
                                  description=f"{short(progress.digest)} {progress.step}",
                                  style={"description_width": "initial"})
                row = HBox([bar, Label()])
                self.rows[(progress.digest, progress.step)] = row
                self.box.children = (*self.box.children, row)
            bar, label = row.children
            bar.value = min(progress.done, bar.max)
            label.value = f"{human(progress.done)} / {human(progress.total)}"
            if progress.finished:
                bar.value = bar.max
                bar.bar_style = "success"


def progress_display(quiet: bool) -> Any:
    """Bars in a notebook, a plain line per layer and step elsewhere; None when quiet."""
    if quiet:
        return None
    if front_end():
        return ProgressBars()
    from nsmagic.images.cli import ProgressLines

    return ProgressLines(sys.stdout)


class ImageTable:
    """%container images: each image with its size, the part shared with other images, the
    part only it needs, and its layers (all measured on disk)."""

    HEADER = ("IMAGE", "ID", "SIZE", "SHARED", "UNIQUE", "LAYERS", "PLATFORM")

    def __init__(self, infos: list[Any]) -> None:
        self.images = infos

    def rows(self) -> list[tuple]:
        return [(_familiar(i.name), short(i.id), human(i.size), human(i.shared),
                 human(i.unique), len(i.layers), i.platform) for i in self.images]

    def __str__(self) -> str:
        if not self.images:
            return "no images: %container pull REF brings one"
        return text_table(self.HEADER, self.rows())

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))

    def _repr_html_(self) -> str:
        if not self.images:
            return f"<p>{str(self)}</p>"
        return html_table(self.HEADER, self.rows(), css_class="nsmagic-images")


def _familiar(name: str) -> str:
    """docker.io/library/alpine:3.20 as Docker prints it: alpine:3.20."""
    from nsmagic.images.reference import RegistryReference, parse

    try:
        reference = parse(name)
    except SpecError:
        return name
    return reference.familiar if isinstance(reference, RegistryReference) else name


def _container_of(name: str) -> Any:
    """The Container of a named container (%container start NAME)."""
    from nsmagic.runtime.named import MANAGER

    return MANAGER.get(name).container


class ImageCommands:
    """The image subcommands of %container (_container_WORD) and %%container build."""

    def _image_call(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except SpecError as error:
            raise UsageError(str(error)) from None
        except NsmagicError as error:
            raise ImageCommandError(str(error)) from None
        except KeyboardInterrupt:
            raise ImageCommandError("interrupted: what was half-done is not kept") from None

    def _container_pull(self, rest: list[str], text: str) -> Any:
        """%container pull REF [--platform OS/ARCH] [-q] [-o]"""
        from nsmagic import images

        parser = _parser("pull", "%container pull REF [--platform OS/ARCH[/VARIANT]] [-q] [-o]")
        parser.add_argument("reference")
        parser.add_argument("--platform")
        parser.add_argument("-q", "--quiet", action="store_true")
        parser.add_argument("-o", "--output-result", action="store_true")
        args = parser.parse_args(rest)
        image = self._image_call(images.pull, args.reference, progress_display(args.quiet),
                                 platform=args.platform)
        if not args.quiet:
            for note in image.notes:
                print(f"nsmagic: {note}")
            print(f"{_familiar(image.name)}  {image.digest}  {human(image.size)} on disk")
        return image if args.output_result else None

    def _container_push(self, rest: list[str], text: str) -> None:
        """%container push REF [DEST] [-q]"""
        from nsmagic import images

        parser = _parser("push", "%container push REF [HOST[:PORT]/NAME[:TAG]] [-q]")
        parser.add_argument("reference")
        parser.add_argument("destination", nargs="?")
        parser.add_argument("-q", "--quiet", action="store_true")
        args = parser.parse_args(rest)
        digest = self._image_call(images.push, args.reference, args.destination,
                                  progress_display(args.quiet))
        print(f"pushed {args.destination or args.reference}@{digest}")

    def _container_images(self, rest: list[str], text: str) -> ImageTable:
        """%container images: a table of the store's images"""
        from nsmagic import images

        if rest:
            raise UsageError("usage: %container images (it takes no arguments)")
        return ImageTable(self._image_call(images.images))

    def _container_rmi(self, rest: list[str], text: str) -> None:
        """%container rmi REF...: remove images and what only they use"""
        from nsmagic import images

        if not rest:
            raise UsageError("usage: %container rmi REF [REF...]")
        for reference in rest:
            for removed in self._image_call(images.remove, reference):
                print(f"removed {removed}")

    def _container_image_prune(self, rest: list[str], text: str) -> None:
        """%container image-prune: remove what no image and no running container uses"""
        from nsmagic import images

        if rest:
            raise UsageError("usage: %container image-prune (it takes no arguments)")
        removed = self._image_call(images.prune)
        for item in removed:
            print(f"removed {item}")
        if not removed:
            print("nothing to prune")

    def _container_diff(self, rest: list[str], text: str) -> None:
        """%container diff NAME: A/C/D lines of what NAME changed in its image"""
        from nsmagic.images.commit import diff

        if len(rest) != 1:
            raise UsageError("usage: %container diff NAME")
        changes = self._image_call(lambda: diff(_container_of(rest[0])))
        if changes:
            print(changes)

    def _container_commit(self, rest: list[str], text: str) -> Any:
        """%container commit NAME REF [-c INSTRUCTION]... [-m MESSAGE] [-a AUTHOR] [-o]"""
        from nsmagic.images.commit import commit, describe

        parser = _parser("commit", "%container commit NAME NAME[:TAG] [--change 'ENV A=1'] "
                         "[-m MESSAGE] [-a AUTHOR] [-o]")
        parser.add_argument("container")
        parser.add_argument("reference")
        parser.add_argument("-c", "--change", action="append", default=[])
        parser.add_argument("-m", "--message", default="")
        parser.add_argument("-a", "--author", default="")
        parser.add_argument("-o", "--output-result", action="store_true")
        args = parser.parse_args(rest)
        image = self._image_call(lambda: commit(
            _container_of(args.container), args.reference, changes=args.change,
            message=args.message, author=args.author))
        print(f"committed {args.container} as {describe(image)}")
        return image if args.output_result else None

    def _build_cell(self, line: str, cell: str) -> Any:
        """%%container build REF [options]: the cell is a Containerfile."""
        from nsmagic.images.build import build

        parser = _parser("build", "%%container build NAME[:TAG] [--context DIR] [--no-cache] "
                         "[--net MODE] [--memory SIZE] [--cpus N] [--pids N] [--platform P] "
                         "[-q] [-o]")
        parser.add_argument("reference")
        parser.add_argument("--context", default=".")
        parser.add_argument("--no-cache", action="store_true")
        parser.add_argument("--platform")
        for option in ("--net", "--memory", "--cpus", "--pids"):
            parser.add_argument(option)
        parser.add_argument("-q", "--quiet", action="store_true")
        parser.add_argument("-o", "--output-result", action="store_true")
        try:
            args = parser.parse_args(shlex.split(line))
        except ValueError as error:
            raise UsageError(f"%%container build: cannot read {line!r}: {error}.") from None
        run_options = {"net": args.net, "memory": args.memory or getattr(self, "memory", None),
                       "cpus": args.cpus or getattr(self, "cpus", None),
                       "pids": args.pids or getattr(self, "pids", None)}
        run_options = {key: value for key, value in run_options.items() if value is not None}

        def write(stream: str, text: str) -> None:
            if args.quiet:
                return
            target = sys.stdout if stream == "stdout" else sys.stderr
            target.write(text)
            target.flush()

        result = self._image_call(build, cell, args.reference,
                                  context=os.path.abspath(args.context), output=write,
                                  progress=progress_display(args.quiet),
                                  no_cache=args.no_cache, run_options=run_options,
                                  platform=args.platform)
        if args.quiet:
            print(result.image.id)
        return result if args.output_result else None


__all__ = ["IMAGE_SUBCOMMANDS", "ImageCommandError", "ImageCommands", "ImageTable",
           "ProgressBars"]
