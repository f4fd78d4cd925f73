"""Published VM and container figures (reference.json), each with the source it was checked in."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

PUBLISHED_LABEL = "published, not measured on this host"


def load_reference() -> dict[str, Any]:
    """The published figures (reference.json), each with its source and what was checked."""
    text = resources.files("nsmagic.vm").joinpath("reference.json").read_text()
    return json.loads(text)


def reference_lines(reference: dict[str, Any]) -> list[list[str]]:
    """The published figures as table lines (header first): system, what, value, source."""
    lines = [["system", "figure", "published value", "source"]]
    for f in reference.get("figures", []):
        if f.get("value") is None:
            value = f"(no figure) {f.get('statement', '')}".strip()
        else:
            bound = "" if f.get("bound") in ("=", None) else f"{f['bound']} "
            value = f"{bound}{f['value']:g} {f['unit']}"
        what = f["what"] if len(f["what"]) <= 70 else f["what"][:67] + "..."
        lines.append([f["system"], what, value, f.get("cite") or f["source"]])
    return lines
