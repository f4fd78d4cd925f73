"""Checks a config.json against the OCI runtime-spec JSON schemas kept in tests/schemas/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

SCHEMA_DIR = Path(__file__).with_name("schemas")
# The release the schemas were taken from (opencontainers/runtime-spec): the version that
# nsmagic.oci writes (OCI_VERSION) and that Debian 12's runc implements.
SCHEMA_RELEASE = "v1.0.2 (commit c4ee7d12c742ffe806cd9350b6af3b4b19faed6f)"


def validate(config: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError on the first way config breaks the runtime spec."""
    # The schema files name each other by file name ("defs.json#/definitions/..."), so all
    # of them are registered under their names.
    resources = [(path.name, Resource.from_contents(json.loads(path.read_text()),
                                                    default_specification=DRAFT4))
                 for path in SCHEMA_DIR.glob("*.json")]
    schema = json.loads((SCHEMA_DIR / "config-schema.json").read_text())
    registry = Registry().with_resources(resources)
    jsonschema.Draft4Validator(schema, registry=registry).validate(config)
