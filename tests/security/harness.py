"""How a security probe runs: the same Python source in an nsmagic container (default
options, or a positive control that switches one protection off) and, where runc is
installed, under runc with Docker's defaults (tests/reference).

A probe is stdlib-only Python that prints one JSON object as its last line of output, with
at least {"reached": bool}: True when the attack got through. Rows compare the three:

    nsmagic default   must not reach (else the test is an xfail naming what it saw)
    positive control  must reach (so the refusal above is the protection, not an accident)
    runc reference    what Docker's defaults give; nsmagic may never reach where runc does not

Every observation is kept (observe()), and written as a table at the session's end when
NSMAGIC_SECURITY_TABLE names a file.
"""

from __future__ import annotations

import json
import os
import textwrap
import uuid
from dataclasses import dataclass, field
from typing import Any

import nsmagic

from ..conftest import IS_ROOT
from ..reference.runc import run_probe, runc_available

# Every name a probe creates on the host carries this prefix (and is removed by its test).
PREFIX = "nsmagic-sec-"
# Short: each probe is a few system calls.
PROBE_TIMEOUT = 30


def unique(what: str = "") -> str:
    """A fresh name with the suite's prefix."""
    return f"{PREFIX}{what}{'-' if what else ''}{uuid.uuid4().hex[:12]}"


@dataclass
class Observation:
    finding: int
    row: str
    mode: str  # "nsmagic", "control", "runc"
    reached: bool | None
    detail: Any
    user: str = field(default_factory=lambda: "root" if IS_ROOT else "nobody")


OBSERVATIONS: list[Observation] = []


def observe(finding: int, row: str, mode: str, verdict: dict[str, Any]) -> dict[str, Any]:
    """Record what a probe saw (for the table) and return its verdict."""
    detail = {k: v for k, v in verdict.items() if k != "reached"}
    OBSERVATIONS.append(Observation(finding, row, mode, verdict.get("reached"), detail))
    return verdict


def verdict_of(stdout: str, stderr: str = "") -> dict[str, Any]:
    """The probe's last output line, a JSON object with "reached"."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        raise AssertionError(f"the probe printed nothing; stderr: {stderr[-2000:]}")
    try:
        verdict = json.loads(lines[-1])
    except ValueError:
        raise AssertionError(f"the probe's last line is not JSON: {lines[-1][:500]!r}; "
                             f"stderr: {stderr[-2000:]}") from None
    assert isinstance(verdict, dict) and "reached" in verdict, verdict
    return verdict


def run_nsmagic(script: str, kind: str = "python", inputs: dict[str, Any] | None = None,
                outputs: tuple[str, ...] = (), **options: Any) -> nsmagic.ContainerResult:
    """nsmagic.run with a timeout (a probe that hangs fails instead of stalling the suite)."""
    with nsmagic.Container(**options) as container:
        return container.run(textwrap.dedent(script), kind=kind, inputs=inputs,
                             outputs=outputs, timeout=PROBE_TIMEOUT)


def in_nsmagic(script: str, **options: Any) -> dict[str, Any]:
    """Run the probe in an nsmagic container (nsmagic.run's options); its verdict."""
    result = run_nsmagic(script, **options)
    assert result.exit_code == 0 and result.exception is None, (
        result.describe(), result.stdout[-2000:], result.stderr[-2000:], result.warnings)
    return verdict_of(result.stdout, result.stderr)


def in_runc(script: str, **options: Any) -> dict[str, Any]:
    """Run the probe under runc with Docker's defaults (run_probe's options); its verdict."""
    result = run_probe(textwrap.dedent(script), language="python", timeout=PROBE_TIMEOUT,
                       **options)
    assert result.exit_code == 0, (result.exit_code, result.stdout[-2000:],
                                   result.stderr[-2000:])
    return verdict_of(result.stdout, result.stderr)


def compare(finding: int, row: str, script: str, *, control: dict[str, Any] | None,
            options: dict[str, Any] | None = None, runc: dict[str, Any] | None = None
            ) -> dict[str, dict[str, Any]]:
    """One row: the default (options), the positive control (nsmagic options that switch the
    protection off; None: no control on this row), and the runc reference (run_probe's
    options; only as root where runc is installed; None: no reference on this row).

    Asserts the control reaches and that nsmagic is at least as strict as runc; returns the
    verdicts by mode so the caller asserts the default's refusal (last, so an xfail names
    the observed default only after the rest held).
    """
    verdicts = {"nsmagic": observe(finding, row, "nsmagic",
                                   in_nsmagic(script, **(options or {})))}
    if control is not None:
        verdicts["control"] = observe(finding, row, "control", in_nsmagic(script, **control))
        assert verdicts["control"]["reached"] is True, (
            f"positive control {control} did not reach: {verdicts['control']}")
    if runc is not None and runc_available():
        verdicts["runc"] = observe(finding, row, "runc", in_runc(script, **runc))
        assert verdicts["runc"]["reached"] or not verdicts["nsmagic"]["reached"], (
            f"nsmagic is weaker than runc with Docker's defaults on {row!r}: nsmagic "
            f"{verdicts['nsmagic']}, runc {verdicts['runc']}")
    return verdicts


def refused(verdicts: dict[str, dict[str, Any]]) -> None:
    """The default's refusal, asserted with the exact observation in the message."""
    assert verdicts["nsmagic"]["reached"] is False, (
        f"nsmagic's default let it through: {verdicts['nsmagic']}")


def write_table(path: str) -> None:
    """The observations as a Markdown table (one line per finding, row and user)."""
    rows: dict[tuple[int, str, str], dict[str, Observation]] = {}
    for item in OBSERVATIONS:
        rows.setdefault((item.finding, item.row, item.user), {})[item.mode] = item

    def cell(item: Observation | None) -> str:
        if item is None:
            return "-"
        word = {True: "REACHED", False: "refused", None: "?"}[item.reached]
        detail = json.dumps(item.detail, sort_keys=True)
        return f"{word} {detail[:160]}".replace("|", "/")

    lines = ["| # | row | user | nsmagic default | positive control | runc (Docker defaults) |",
             "|---|---|---|---|---|---|"]
    for (finding, row, user), modes in sorted(rows.items()):
        lines.append(f"| {finding} | {row} | {user} | {cell(modes.get('nsmagic'))} | "
                     f"{cell(modes.get('control'))} | {cell(modes.get('runc'))} |")
    mode = "a" if os.path.exists(path) else "w"
    with open(path, mode) as handle:
        handle.write("\n".join(lines) + "\n\n")
    with open(path + ".json", mode) as handle:  # the same, with every detail
        for item in OBSERVATIONS:
            handle.write(json.dumps(item.__dict__, sort_keys=True) + "\n")
