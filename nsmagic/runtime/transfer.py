"""Moving variables between the notebook and a container: pickled on the way in, and on the
way out unpickled with an allow-list, since a container's bytes must never run code in the
notebook kernel (an unrestricted unpickler would let it)."""

from __future__ import annotations

import io
import json
import pickle
from typing import Any

from nsmagic.errors import SpecError

# Plain data only: what a notebook user moves in and out of a container in a lesson.
_SAFE_GLOBALS = {
    ("builtins", name) for name in (
        "complex", "set", "frozenset", "bytearray", "range", "slice", "list", "dict",
        "tuple", "str", "bytes", "int", "float", "bool")
} | {
    ("collections", "OrderedDict"), ("collections", "deque"), ("collections", "Counter"),
    ("datetime", "datetime"), ("datetime", "date"), ("datetime", "time"),
    ("datetime", "timedelta"), ("datetime", "timezone"), ("decimal", "Decimal"),
    ("fractions", "Fraction"),
}


class TransferError(SpecError):
    """A variable cannot be moved into or out of a container; the message names it."""


def pack(values: dict[str, Any]) -> dict[str, bytes]:
    """Pickle each variable on its own, so an error names the one that failed."""
    packed = {}
    for name, value in values.items():
        try:
            packed[name] = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as error:  # noqa: BLE001 - pickling raises many kinds
            raise TransferError(
                f"variable {name!r} cannot be copied into the container: it cannot be "
                f"pickled ({type(value).__name__}: {error})."
            ) from None
    return packed


def unpack_trusted(packed: dict[str, bytes]) -> dict[str, Any]:
    """Inside the container: the notebook's own pickles."""
    return {name: pickle.loads(blob) for name, blob in packed.items()}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not plain data")


def unpack_untrusted(packed: dict[str, bytes]) -> tuple[dict[str, Any], dict[str, str]]:
    """In the notebook: a container's pickles, allowing plain data only.

    Returns the values, and for each refused variable a sentence naming it.
    """
    values, errors = {}, {}
    for name, blob in packed.items():
        try:
            values[name] = _SafeUnpickler(io.BytesIO(blob)).load()
        except Exception as error:  # noqa: BLE001
            errors[name] = (
                f"variable {name!r} cannot be copied out of the container: only plain data "
                f"(numbers, strings, bytes, lists, tuples, dicts, sets, dates) can ({error})."
            )
    return values, errors


def unpack_reply(header: bytes, blob: bytes) -> tuple[dict[str, Any], dict[str, str]]:
    """The two frames a payload sends back after --out: errors, then the pickles.

    Both come from the container: anything malformed becomes an error sentence, never an
    exception in the notebook.
    """
    try:
        errors = json.loads(header)["errors"]
        if not isinstance(errors, dict):
            raise TypeError
        errors = {str(name): str(text) for name, text in errors.items()}
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return {}, {"--out": "the container's reply to --out was malformed: no variable "
                             "was copied out."}
    outer, outer_errors = unpack_untrusted({"outputs": blob})
    inner = outer.get("outputs", {})
    if not isinstance(inner, dict) or not all(isinstance(v, bytes) for v in inner.values()):
        return {}, {**errors, "--out": "the container's reply to --out was malformed: no "
                                       "variable was copied out."}
    values, refused = unpack_untrusted(inner)
    return values, {**errors, **outer_errors, **refused}
