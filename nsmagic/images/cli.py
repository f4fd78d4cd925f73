"""Command-line image commands (pull, images, rmi, image-prune, push, save) for a CLI."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import TextIO

from nsmagic.errors import NsmagicError
from nsmagic.images import api
from nsmagic.images.digests import short
from nsmagic.images.progress import Progress
from nsmagic.tables import text_table


def human(size: int) -> str:
    """Bytes in decimal units, as docker images prints them."""
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000  # type: ignore[assignment]
    return f"{size} B"


class ProgressLines:
    """A line per layer and step: rewritten in place on a terminal, printed once when done
    otherwise (a log gets no carriage returns)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()

    def __call__(self, progress: Progress) -> None:
        text = f"{short(progress.digest)}  {progress.step:8}  {human(progress.done):>9} / " \
               f"{human(progress.total)}"
        if self.tty:
            self.out.write("\r" + text + ("\n" if progress.finished else ""))
            self.out.flush()
        elif progress.finished:
            self.out.write(text + "\n")


def _pull(args: argparse.Namespace, out: TextIO) -> int:
    started = time.monotonic()
    image = api.pull(args.reference, None if args.quiet else ProgressLines(out),
                     platform=args.platform)
    for note in image.notes:
        out.write(f"note: {note}\n")
    out.write(f"{image.name}  {image.digest}  {human(image.size)} on disk  "
              f"({time.monotonic() - started:.1f} s)\n")
    return 0


def _images(args: argparse.Namespace, out: TextIO) -> int:
    found = api.images()
    if args.json:
        out.write(json.dumps([{"name": i.name, "id": i.id, "digest": i.digest, "size": i.size,
                               "shared": i.shared, "unique": i.unique, "platform": i.platform,
                               "layers": [{"diff_id": la.diff_id, "digest": la.digest,
                                           "size": la.size, "images": la.images}
                                          for la in i.layers]} for i in found], indent=1)
                  + "\n")
        return 0
    if not found:
        out.write("no images: pull one with nsmagic pull REF\n")
        return 0
    rows = [(i.name, short(i.id), human(i.size), human(i.shared), human(i.unique),
             len(i.layers), i.platform) for i in found]
    out.write(text_table(("IMAGE", "ID", "SIZE", "SHARED", "UNIQUE", "LAYERS", "PLATFORM"),
                         rows) + "\n")
    return 0


def _rmi(args: argparse.Namespace, out: TextIO) -> int:
    for reference in args.references:
        for removed in api.remove(reference):
            out.write(f"removed {removed}\n")
    return 0


def _prune(args: argparse.Namespace, out: TextIO) -> int:
    removed = api.prune()
    for item in removed:
        out.write(f"removed {item}\n")
    if not removed:
        out.write("nothing to prune\n")
    return 0


def _push(args: argparse.Namespace, out: TextIO) -> int:
    digest = api.push(args.reference, args.destination, None if args.quiet
                      else ProgressLines(out))
    out.write(f"pushed {args.destination or args.reference}@{digest}\n")
    return 0


def _save(args: argparse.Namespace, out: TextIO) -> int:
    digest = api.export(args.reference, args.destination)
    out.write(f"wrote {args.destination} ({digest})\n")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add the image commands to a CLI's sub-commands; each sets `run(args, out) -> int`."""
    pull = commands.add_parser("pull", help="bring an image into the store",
                               description="Pull from a registry (NAME[:TAG], HOST[:PORT]/NAME"
                               "[:TAG], docker://...), an OCI layout (oci:DIR[:TAG]) or a "
                               "docker-archive (docker-archive:FILE).")
    pull.add_argument("reference")
    pull.add_argument("--platform", help="OS/ARCH[/VARIANT] (default: this machine's)")
    pull.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    pull.set_defaults(run=_pull)
    listing = commands.add_parser("images", help="the store's images, sizes measured on disk")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=_images)
    rmi = commands.add_parser("rmi", help="remove images and what only they use")
    rmi.add_argument("references", nargs="+")
    rmi.set_defaults(run=_rmi)
    prune = commands.add_parser("image-prune",
                                help="remove layers no image and no running container uses")
    prune.set_defaults(run=_prune)
    push = commands.add_parser("push", help="send an image of the store to a registry")
    push.add_argument("reference")
    push.add_argument("destination", nargs="?", help="HOST[:PORT]/NAME[:TAG] (default: the "
                      "image's own name)")
    push.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    push.set_defaults(run=_push)
    save = commands.add_parser("save", help="write an image to oci:DIR[:TAG] or "
                               "docker-archive:FILE[:NAME:TAG]")
    save.add_argument("reference")
    save.add_argument("destination")
    save.set_defaults(run=_save)


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """python -m nsmagic.images COMMAND ...: errors are one line on stderr, exit status 1."""
    parser = argparse.ArgumentParser(prog="python -m nsmagic.images",
                                     description="nsmagic's image commands")
    add_commands(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(argv), out)


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run a parsed image command: its exit status; an error is one line on stderr."""
    try:
        return args.run(args, out or sys.stdout)
    except NsmagicError as error:
        sys.stderr.write(f"nsmagic: {error}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("nsmagic: interrupted (what was half-done is not kept)\n")
        return 130
