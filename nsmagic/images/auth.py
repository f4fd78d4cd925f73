"""Registry authentication: WWW-Authenticate challenges, bearer tokens, saved credentials.

The flow Docker Hub, ghcr.io and quay.io use: a request answered 401 with
`WWW-Authenticate: Bearer realm=...,service=...,scope=...` is asked again with a token from the
realm (anonymous, or with the user's saved name and password). Credentials are read from the
files `podman login` and `docker login` write; nothing is stored by nsmagic.
"""

from __future__ import annotations

import base64
import json
import os
import re
from dataclasses import dataclass

_PARAM = re.compile(r'\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


@dataclass(frozen=True)
class Challenge:
    """One WWW-Authenticate challenge: its scheme (bearer, basic) and parameters."""

    scheme: str
    params: dict[str, str]


def parse_challenges(header: str) -> list[Challenge]:
    """The challenges of a WWW-Authenticate header (RFC 7235 auth-params; quoted or not)."""
    found: list[Challenge] = []
    position = 0
    while position < len(header):
        scheme_match = re.compile(r"\s*,?\s*([A-Za-z][A-Za-z0-9_-]*)(?=\s|$)").match(
            header, position)
        if not scheme_match:
            break
        scheme = scheme_match.group(1).lower()
        position = scheme_match.end()
        params: dict[str, str] = {}
        while True:
            param = _PARAM.match(header, position)
            if not param:
                break
            value = param.group(2)
            value = re.sub(r"\\(.)", r"\1", value) if value is not None else param.group(3)
            params[param.group(1).lower()] = value
            position = param.end()
        found.append(Challenge(scheme, params))
    return found


def _auth_files() -> list[str]:
    home = os.path.expanduser("~")
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.geteuid()}"
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    docker = os.environ.get("DOCKER_CONFIG") or os.path.join(home, ".docker")
    candidates = [os.environ.get("REGISTRY_AUTH_FILE"),
                  os.path.join(runtime, "containers", "auth.json"),
                  os.path.join(config, "containers", "auth.json"),
                  os.path.join(docker, "config.json")]
    return [path for path in candidates if path]


def _hosts_for(registry: str) -> list[str]:
    if registry in ("docker.io", "registry-1.docker.io", "index.docker.io"):
        return ["docker.io", "index.docker.io", "https://index.docker.io/v1/",
                "registry-1.docker.io"]
    return [registry, f"https://{registry}", f"http://{registry}"]


def credentials(registry: str) -> tuple[str, str] | None:
    """The (user, password) saved for the registry by podman login or docker login, if any."""
    for path in _auth_files():
        try:
            with open(path, encoding="utf-8") as handle:
                auths = json.load(handle).get("auths") or {}
        except (OSError, ValueError, AttributeError):
            continue
        for host in _hosts_for(registry):
            entry = auths.get(host) or auths.get(host.rstrip("/"))
            if not isinstance(entry, dict) or not entry.get("auth"):
                continue
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                continue
            if user:
                return user, password
    return None
