"""A client of the OCI distribution API v2 (pull and push), on requests.

Plain HTTP is used for loopback registries only (127.0.0.0/8, ::1, localhost), as Docker
does; every other registry is spoken to over HTTPS with certificates verified.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO
from urllib.parse import urljoin

import requests

from nsmagic.images import auth
from nsmagic.images.errors import ImageError, TransferInterrupted
from nsmagic.images.manifest import ACCEPT, MAX_DOCUMENT
from nsmagic.images.progress import Reporter
from nsmagic.images.reference import RegistryReference
from nsmagic.images.store import Fetch

CHUNK = 1 << 20
NETWORK_CHUNK = 1 << 16
TIMEOUT = (10, 60)  # seconds to connect, seconds of silence while reading
USER_AGENT = "nsmagic/0.1 (+https://github.com/nsmagic)"


def is_loopback(host: str) -> bool:
    """Whether HOST[:PORT] names this machine (the registries Docker reaches over plain HTTP)."""
    name = host
    if name.startswith("["):
        name = name[1:name.find("]")]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class RegistryClient:
    """One repository of one registry; remembers its token for later requests."""

    def __init__(self, reference: RegistryReference, push: bool = False) -> None:
        self.reference = reference
        host = reference.api_host
        self.scheme = "http" if is_loopback(host) else "https"
        self.base = f"{self.scheme}://{host}/v2/{reference.repository}"
        self.scope = f"repository:{reference.repository}:" + ("pull,push" if push else "pull")
        self.session = requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT
        self._authenticated = False

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the exchange ---------------------------------------------------------------------

    @property
    def where(self) -> str:
        return f"the registry {self.reference.registry}"

    def request(self, method: str, url: str, ok: tuple[int, ...], what: str,
                **kwargs: Any) -> requests.Response:
        """A request, asked again with a token after a 401; ImageError for any status not
        in ok (one sentence: what was asked, who answered what)."""
        kwargs.setdefault("timeout", TIMEOUT)
        try:
            response = self.session.request(method, url, **kwargs)
            if response.status_code == 401 and not self._authenticated:
                self._authenticate(response, what)
                response.close()
                data = kwargs.get("data")
                if hasattr(data, "seek"):
                    data.seek(0)
                response = self.session.request(method, url, **kwargs)
        except requests.exceptions.SSLError as error:
            raise ImageError(f"{self.where} failed the TLS check for {what} ({_reason(error)})"
                             ) from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as error:
            raise ImageError(f"cannot reach {self.where} for {what}: {_reason(error)}") from None
        if response.status_code not in ok:
            raise self.error(response, what)
        return response

    def error(self, response: requests.Response, what: str) -> ImageError:
        status = response.status_code
        detail = _registry_message(response)
        if status in (401, 403):
            return ImageError(f"{self.where} refused {what} ({status} {response.reason}"
                              f"{detail}): the image may be private (log in with podman "
                              "login or docker login) or the name may be wrong")
        if status == 404:
            return ImageError(f"{what} found nothing: {self.reference} does not exist in "
                              f"{self.where} (404{detail})")
        if status == 429:
            return ImageError(f"{self.where} limits requests and refused {what} (429 Too Many "
                              "Requests): wait, or log in for a higher limit")
        if status >= 500:
            return ImageError(f"{self.where} failed while answering {what} ({status} "
                              f"{response.reason}{detail}): try again later")
        return ImageError(f"{self.where} answered {status} {response.reason} to {what}{detail}")

    def _authenticate(self, response: requests.Response, what: str) -> None:
        challenges = auth.parse_challenges(response.headers.get("WWW-Authenticate", ""))
        saved = auth.credentials(self.reference.registry)
        for challenge in challenges:
            if challenge.scheme == "bearer" and challenge.params.get("realm"):
                self.session.headers["Authorization"] = "Bearer " + self._token(challenge,
                                                                                 saved, what)
                self._authenticated = True
                return
        for challenge in challenges:
            if challenge.scheme == "basic":
                if saved is None:
                    raise ImageError(f"{self.where} asks for a user name and password for "
                                     f"{what} (401): log in with podman login or docker login")
                if self.scheme != "https":
                    raise ImageError(f"{self.where} asks for a password over plain HTTP for "
                                     f"{what}: nsmagic sends passwords over HTTPS only")
                self.session.auth = saved
                self._authenticated = True
                return
        raise ImageError(f"{self.where} refused {what} (401 Unauthorized) without a bearer or "
                         "basic challenge nsmagic can answer")

    def _token(self, challenge: auth.Challenge, saved: tuple[str, str] | None,
               what: str) -> str:
        realm = challenge.params["realm"]
        if not realm.startswith("https://") and not (
                realm.startswith("http://") and is_loopback(re.sub(r"^http://([^/]+).*", r"\1",
                                                                  realm))):
            raise ImageError(f"{self.where} sends nsmagic for a token to {realm!r}, which is "
                             "neither HTTPS nor this machine")
        scopes = [self.scope]
        offered = challenge.params.get("scope")
        if offered and offered not in scopes:
            scopes.append(offered)
        params: list[tuple[str, str]] = [("scope", scope) for scope in scopes]
        if challenge.params.get("service"):
            params.insert(0, ("service", challenge.params["service"]))
        try:
            answer = requests.get(realm, params=params, auth=saved, timeout=TIMEOUT,
                                  headers={"User-Agent": USER_AGENT})
        except requests.exceptions.RequestException as error:
            raise ImageError(f"cannot reach the token service {realm} of {self.where} for "
                             f"{what}: {_reason(error)}") from None
        if answer.status_code != 200:
            raise ImageError(f"the token service {realm} of {self.where} refused a token for "
                             f"{what} ({answer.status_code} {answer.reason}): "
                             + ("check the saved credentials" if saved else
                                "the image may be private: log in first"))
        try:
            body = answer.json()
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise ImageError(f"the token service {realm} of {self.where} answered without a "
                             "token")
        return token

    # -- pull -----------------------------------------------------------------------------

    def manifest(self, target: str) -> tuple[bytes, str | None]:
        """A manifest or index by tag or digest: its bytes and the media type served."""
        what = f"the manifest of {self.reference.repository}:{target}" if not target.startswith(
            "sha256:") else f"the manifest {target} of {self.reference.repository}"
        response = self.request("GET", f"{self.base}/manifests/{target}", (200,), what,
                                headers={"Accept": ACCEPT}, stream=True)
        with response:
            data = response.raw.read(MAX_DOCUMENT + 1, decode_content=True)
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip() or None
        return data, media_type

    def blob(self, digest: str, offset: int = 0) -> tuple[int, Iterable[bytes]]:
        """A blob's bytes from offset (if the registry honours Range; else from 0)."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        what = f"the blob {digest} of {self.reference.repository}"
        response = self.request("GET", f"{self.base}/blobs/{digest}", (200, 206, 416), what,
                                headers=headers, stream=True)
        if response.status_code == 416:  # our partial is no prefix of it: start over
            response.close()
            return self.blob(digest, 0)
        start = 0
        if response.status_code == 206:
            found = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
            start = int(found.group(1)) if found else 0
        return start, self._chunks(response, what)

    @staticmethod
    def _chunks(response: requests.Response, what: str) -> Iterator[bytes]:
        try:
            with response:
                # 64 KiB: what arrived before a cut is kept (a read of 1 MiB loses it all).
                yield from response.iter_content(NETWORK_CHUNK)
        except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError,
                requests.exceptions.Timeout) as error:
            raise TransferInterrupted(f"{what} was cut off: {_reason(error)}") from None

    # -- push -----------------------------------------------------------------------------

    def has_blob(self, digest: str) -> bool:
        response = self.request("HEAD", f"{self.base}/blobs/{digest}", (200, 404),
                                f"the blob {digest} of {self.reference.repository}")
        return response.status_code == 200

    def upload_blob(self, digest: str, source: BinaryIO, size: int,
                    reporter: Reporter | None = None) -> None:
        """One monolithic upload: POST for a session, then PUT the bytes with the digest."""
        what = f"an upload to {self.reference.repository}"
        started = self.request("POST", f"{self.base}/blobs/uploads/", (202,), what)
        location = started.headers.get("Location")
        if not location:
            raise ImageError(f"{self.where} opened {what} without a Location to send it to")
        url = urljoin(self.base + "/", location)
        url += ("&" if "?" in url else "?") + f"digest={digest}"
        body = _Upload(source, size, reporter)
        self.request("PUT", url, (201, 204), f"the upload of {digest} to "
                     f"{self.reference.repository}", data=body,
                     headers={"Content-Type": "application/octet-stream",
                              "Content-Length": str(size)})

    def put_manifest(self, target: str, data: bytes, media_type: str) -> None:
        self.request("PUT", f"{self.base}/manifests/{target}", (200, 201, 202),
                     f"the manifest {self.reference.repository}:{target}", data=data,
                     headers={"Content-Type": media_type})


class RegistrySource:
    """An image of a registry, as pull reads it."""

    def __init__(self, reference: RegistryReference) -> None:
        self.reference = reference
        self.label = str(reference)
        self.client = RegistryClient(reference)

    def top(self) -> tuple[bytes, str | None, str | None]:
        data, media_type = self.client.manifest(self.reference.target)
        return data, media_type, self.reference.digest

    def document(self, digest: str) -> bytes:
        return self.client.manifest(digest)[0]

    def fetch(self, digest: str) -> Fetch:
        return lambda offset: self.client.blob(digest, offset)

    def close(self) -> None:
        self.client.close()


class _Upload:
    """A blob's file read for an upload, reporting progress (requests sizes it by len())."""

    def __init__(self, source: BinaryIO, size: int, reporter: Reporter | None) -> None:
        self._source = source
        self._size = size
        self._reporter = reporter
        self._done = 0

    def __len__(self) -> int:
        return self._size

    def seek(self, offset: int) -> None:
        self._source.seek(offset)
        self._done = offset

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(CHUNK if size is None or size < 0 else max(size, CHUNK))
        self._done += len(data)
        if self._reporter is not None:
            self._reporter(self._done)
        return data


def _registry_message(response: requests.Response) -> str:
    """The registry's own error words ({"errors": [{"code", "message"}]}), briefly."""
    try:
        errors = response.json().get("errors") or []
        first = errors[0]
        return f": {first.get('code', '')} {first.get('message', '')}".rstrip()
    except (ValueError, AttributeError, IndexError, TypeError):
        return ""


def _reason(error: BaseException) -> str:
    text = str(error)
    found = re.search(r"\[Errno -?\d+\] ([^')\]]+)", text)
    if found:
        return found.group(1)
    if "Read timed out" in text:
        return "it stopped answering"
    return text.split(": ", 1)[-1][:200] if text else type(error).__name__
