"""A real registry for tests: Debian's docker-registry on 127.0.0.1, and a front for it.

The front is a small HTTP server of this test run between nsmagic and the registry: it can
demand bearer tokens (and issue them, as Docker Hub's auth service does), serve blobs slowly,
corrupt one, or cut a download off; it records what it was asked.
"""

from __future__ import annotations

import ctypes
import http.client
import http.server
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: the forked child only calls it


def _die_with_parent() -> None:
    """In the registry's process before exec: SIGTERM when the test process dies, even by
    SIGKILL (the fixture's stop() is the usual way; this one covers a killed test run)."""
    _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Registry:
    """docker-registry serving a temporary directory; stop() always ends it."""

    def __init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix="nsmagic-test-registry-")
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        config = os.path.join(self.root, "config.yml")
        with open(config, "w") as handle:
            handle.write(f"""version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {self.root}/data
  delete:
    enabled: true
http:
  addr: {self.host}
""")
        self.process = subprocess.Popen(["docker-registry", "serve", config],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                error = self.process.stderr.read().decode() if self.process.stderr else ""
                self.stop()
                raise RuntimeError(f"docker-registry did not start: {error}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class FrontRules:
    """What the front does; change them between tests (reset() puts them back)."""

    token: str | None = None  # demand this bearer token, issued by /token
    delay_per_chunk: float = 0.0  # seconds between 64 KiB chunks of a blob
    corrupt: set[str] = field(default_factory=set)  # blob digests served with a byte flipped
    cut_after: dict[str, int] = field(default_factory=dict)  # digest -> bytes, then drop (once)
    ignore_range: bool = False
    status: int | None = None  # answer every registry request with this status
    seen: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    token_requests: list[dict[str, list[str]]] = field(default_factory=list)

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]


class Front:
    """A threaded HTTP server in this process that forwards to the registry by its rules."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.rules = FrontRules()
        rules = self.rules
        front = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                self.forward()

            def do_HEAD(self) -> None:  # noqa: N802
                self.forward()

            def do_POST(self) -> None:  # noqa: N802
                self.forward()

            def do_PUT(self) -> None:  # noqa: N802
                self.forward()

            def do_PATCH(self) -> None:  # noqa: N802
                self.forward()

            def token(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
                rules.token_requests.append(query)
                body = json.dumps({"token": rules.token, "expires_in": 300}).encode()
                self.send_response(200 if query.get("service") == ["nsmagic-test"] else 400)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def forward(self) -> None:
                if self.path.startswith("/token"):
                    return self.token()
                rules.seen.append((self.command, self.path, dict(self.headers)))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if rules.status:
                    self.send_response(rules.status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if rules.token and self.headers.get("Authorization") != f"Bearer {rules.token}":
                    repository = self.path.split("/")[2:4]
                    self.send_response(401)
                    self.send_header("WWW-Authenticate",
                                     f'Bearer realm="http://{front.host}/token",'
                                     f'service="nsmagic-test",'
                                     f'scope="repository:{"/".join(repository)}:pull"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                # A header sent several times (skopeo's Accept) is one list to pass on.
                headers = {k: ", ".join(self.headers.get_all(k) or [])
                           for k in {k.title() for k in self.headers.keys()}
                           if k.lower() not in ("authorization", "connection")}
                if rules.ignore_range:
                    headers.pop("Range", None)
                upstream = http.client.HTTPConnection(registry.host, timeout=30)
                upstream.request(self.command, self.path, body=body, headers=headers)
                answer = upstream.getresponse()
                digest = self.path.rsplit("/", 1)[-1] if "/blobs/sha256:" in self.path else ""
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ("connection", "transfer-encoding"):
                        self.send_header(key, value)
                self.send_header("Connection", "close")
                self.end_headers()
                sent = 0
                cut = rules.cut_after.pop(digest, None) if self.command == "GET" else None
                while chunk := answer.read(65536):
                    if digest and digest in rules.corrupt and sent == 0:
                        chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                    if cut is not None and sent + len(chunk) > cut:
                        self.wfile.write(chunk[:cut - sent])
                        self.wfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        upstream.close()
                        return
                    try:
                        self.wfile.write(chunk)
                    except (BrokenPipeError, ConnectionResetError):
                        break
                    sent += len(chunk)
                    if digest and rules.delay_per_chunk:
                        time.sleep(rules.delay_per_chunk)
                upstream.close()
                self.close_connection = True

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def new_token() -> str:
    return secrets.token_hex(16)
