"""A small OCI distribution API client on the standard library's http.client (bounded).

Everything a registry sends is hostile: replies read into memory are bounded (`MAX_SMALL`, and the
manifest's own bound), a blob is hashed while it is streamed to a file and refused when its bytes
go beyond the size its (verified) descriptor gives or do not match its digest; sizes or digests in
headers are never trusted. Every socket operation has a timeout. HTTPS is the default, verified
against the system's CAs (or `ca_file`); `tls_verify=False` — only when asked — accepts any
certificate and falls back to plain HTTP when the registry does not speak TLS (as podman does).
"""
from __future__ import annotations

import hashlib
import http.client
import re
import ssl
import time
import urllib.parse
from typing import BinaryIO, Callable, Optional

from . import auth
from .errors import INTEGRITY, NETWORK, NOT_FOUND, UNAUTHORIZED, RegistryError
from .reference import Reference

MAX_SMALL = 1 << 20               # a token reply, an error body
TIMEOUT = 60.0                    # every socket operation
SMALL_DEADLINE = 120.0            # a whole manifest, config, token or error body
CHUNK = 1 << 20
_REDIRECTS = (301, 302, 303, 307, 308)
USER_AGENT = "pysandbox"


def _clean(text: str, n: int = 200) -> str:
    return re.sub(r"[^\x20-\x7e]", "?", text)[:n]


def small_json(data: bytes):
    """A small document from the registry (an error body, a token reply): bounded in size and
    nesting (store/tarsafe.json_loads); None when it is not one."""
    from ..store import tarsafe
    try:
        return tarsafe.json_loads(data, "reply", tarsafe.DEFAULT_LIMITS)
    except (tarsafe.TarLimitError, ValueError, UnicodeDecodeError):
        return None


class Reply:
    """A reply whose body has not been read yet (conn stays open until close)."""

    def __init__(self, conn, resp: http.client.HTTPResponse, url: str):
        self.conn, self.resp, self.url = conn, resp, url
        self.status = resp.status

    def header(self, name: str) -> str:
        return self.resp.getheader(name) or ""

    def read_bounded(self, limit: int, what: str, hint: str = "") -> bytes:
        cl = self.header("Content-Length")
        if cl.isdigit() and int(cl) > limit:
            self.close()
            raise RegistryError(f"{what}: the registry announces {cl} bytes, more than the {limit} bytes allowed"
                               f"{hint}", INTEGRITY)
        data = bytearray()
        deadline = time.monotonic() + SMALL_DEADLINE
        try:
            while len(data) <= limit:
                chunk = self.resp.read(min(CHUNK, limit + 1 - len(data)))
                if not chunk:
                    break
                data += chunk
                if time.monotonic() > deadline:
                    raise RegistryError(f"{what}: not read within {SMALL_DEADLINE:.0f} s (too slow)", NETWORK)
        except (OSError, http.client.HTTPException) as e:
            raise RegistryError(f"{what}: connection failed while reading ({_clean(str(e))})", NETWORK) from None
        finally:
            self.close()
        if len(data) > limit:
            raise RegistryError(f"{what}: more than the {limit} bytes allowed{hint}", INTEGRITY)
        return bytes(data)

    def close(self) -> None:
        try:
            self.resp.close()
        finally:
            self.conn.close()


class Client:
    """One repository of one registry. `actions`: "pull" or "pull,push" (the token scope)."""

    def __init__(self, ref: Reference, *, tls_verify: bool = True, ca_file: Optional[str] = None,
                 authfile: Optional[str] = None, actions: str = "pull", timeout: float = TIMEOUT):
        self.ref, self.tls_verify, self.timeout, self.actions = ref, tls_verify, timeout, actions
        self.scheme = "https"
        self.base = f"https://{ref.api_host}"
        self.creds = auth.credentials(ref.host, ref.path, authfile)
        self.authz: Optional[str] = None
        if tls_verify:
            try:
                self.ctx = ssl.create_default_context(cafile=ca_file)
            except (OSError, ssl.SSLError) as e:
                raise RegistryError(f"{ca_file}: cannot load the CA file ({_clean(str(e))})", 2) from None
        else:
            self.ctx = ssl.create_default_context()
            self.ctx.check_hostname = False
            self.ctx.verify_mode = ssl.CERT_NONE
        self._probed = False

    # ---- transport
    def _connect(self, url: str):
        u = urllib.parse.urlsplit(url)
        if u.scheme == "https":
            return http.client.HTTPSConnection(u.hostname, u.port, timeout=self.timeout, context=self.ctx)
        if u.scheme == "http":
            return http.client.HTTPConnection(u.hostname, u.port, timeout=self.timeout)
        raise RegistryError(f"unsupported URL {_clean(url)!r} from the registry", NETWORK)

    def _send(self, method: str, url: str, headers: dict, body) -> Reply:
        conn = self._connect(url)
        u = urllib.parse.urlsplit(url)
        target = (u.path or "/") + (f"?{u.query}" if u.query else "")
        try:
            conn.request(method, target, body=body, headers=dict(headers, **{"User-Agent": USER_AGENT}))
            resp = conn.getresponse()
        except ssl.SSLCertVerificationError as e:
            conn.close()
            raise RegistryError(f"{u.netloc}: TLS certificate verification failed ({_clean(e.verify_message or str(e))}; "
                                f"--tls-verify=false to accept it, or --ca-file)", NETWORK) from None
        except ssl.SSLError as e:
            conn.close()
            raise _TLSError(f"{u.netloc}: TLS failed ({_clean(str(e))}; a plain-HTTP registry needs "
                            f"--tls-verify=false)") from None
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise RegistryError(f"{u.netloc}: cannot reach the registry ({_clean(str(e) or type(e).__name__)})",
                                NETWORK) from None
        return Reply(conn, resp, url)

    def _probe(self) -> None:
        """With tls_verify=False: https first, plain http when the registry does not speak TLS."""
        if self._probed:
            return
        self._probed = True
        if self.tls_verify:
            return
        try:
            self._send("GET", self.base + "/v2/", {}, None).close()
        except _TLSError:
            self.scheme, self.base = "http", f"http://{self.ref.api_host}"

    def request(self, method: str, path: str, *, headers: Optional[dict] = None, body=None,
                ok: tuple = (200,), what: str = "", rewind: Optional[Callable[[], None]] = None) -> Reply:
        """Send, answering one auth challenge and following redirects (GET/HEAD). Raises
        RegistryError for a status not in `ok` (the reply is closed)."""
        self._probe()
        url = path if path.startswith(("http://", "https://")) else self.base + path
        hdrs = dict(headers or {})
        authed = False
        for _ in range(8):
            h = dict(hdrs)
            same = urllib.parse.urlsplit(url).netloc == urllib.parse.urlsplit(self.base).netloc
            if self.authz and same:
                h["Authorization"] = self.authz
            r = self._send(method, url, h, body)
            if r.status == 401 and not authed and same:
                challenge = r.header("WWW-Authenticate")
                r.close()
                self._answer(challenge, what)
                authed = True
                if rewind:
                    rewind()
                continue
            if r.status in _REDIRECTS and method in ("GET", "HEAD") and r.header("Location"):
                url = urllib.parse.urljoin(url, r.header("Location"))
                r.close()
                continue
            if r.status in ok:
                return r
            raise self._error(r, what)
        raise RegistryError(f"{what}: too many redirects or authentication rounds", NETWORK)

    def _error(self, r: Reply, what: str) -> RegistryError:
        msg = ""
        try:
            body = r.read_bounded(MAX_SMALL, what)
            doc = small_json(body) if body else None
            errs = doc.get("errors") if isinstance(doc, dict) else None
            if isinstance(errs, list) and errs and isinstance(errs[0], dict):
                msg = f": {_clean(str(errs[0].get('code', '')))} {_clean(str(errs[0].get('message', '')))}"
        except RegistryError:
            pass
        finally:
            r.close()
        if r.status in (401, 403):
            hint = "" if self.creds else " (no credentials for it in the auth files)"
            return RegistryError(f"{what}: unauthorized (HTTP {r.status}{msg}){hint}", UNAUTHORIZED)
        if r.status == 404:
            return RegistryError(f"{what}: not found (HTTP 404{msg})", NOT_FOUND)
        return RegistryError(f"{what}: the registry answered HTTP {r.status}{msg}", NETWORK)

    def _answer(self, challenge: str, what: str) -> None:
        scheme, params = auth.parse_challenge(challenge)
        if scheme == "basic":
            if not self.creds:
                raise RegistryError(f"{what}: unauthorized (the registry asks for a login; no credentials for "
                                    f"{self.ref.host} in the auth files)", UNAUTHORIZED)
            if self.scheme != "https" and self.tls_verify:
                raise RegistryError(f"{what}: refusing to send a password over plain HTTP", UNAUTHORIZED)
            self.authz = auth.basic_header(self.creds)
        elif scheme == "bearer" and params.get("realm"):
            self.authz = "Bearer " + self._token(params, what)
        else:
            raise RegistryError(f"{what}: unauthorized (unsupported challenge {_clean(challenge, 60)!r})",
                                UNAUTHORIZED)

    def _token(self, params: dict, what: str) -> str:
        realm = params["realm"]
        u = urllib.parse.urlsplit(realm)
        if u.scheme not in ("https", "http") or (u.scheme == "http" and self.tls_verify and self.scheme == "https"):
            raise RegistryError(f"{what}: refusing the token service {_clean(realm)!r} (not https)", UNAUTHORIZED)
        q = {k: params[k] for k in ("service",) if params.get(k)}
        q["scope"] = params.get("scope") or f"repository:{self.ref.path}:{self.actions}"
        if self.actions != "pull" and ":pull" in q["scope"] and "push" not in q["scope"]:
            q["scope"] = f"repository:{self.ref.path}:{self.actions}"
        url = realm + ("&" if u.query else "?") + urllib.parse.urlencode(q)
        h = {"Authorization": auth.basic_header(self.creds)} if self.creds else {}
        r = self._send("GET", url, h, None)
        if r.status != 200:
            r.close()
            if r.status in (401, 403):
                hint = "" if self.creds else "; no credentials for it in the auth files"
                raise RegistryError(f"{what}: unauthorized (the token service {u.netloc} refused: HTTP "
                                    f"{r.status}{hint})", UNAUTHORIZED)
            raise RegistryError(f"{what}: the token service {u.netloc} answered HTTP {r.status}", NETWORK)
        doc = small_json(r.read_bounded(MAX_SMALL, f"{what}: token"))
        tok = (doc.get("token") or doc.get("access_token")) if isinstance(doc, dict) else None
        if not isinstance(tok, str) or not tok or len(tok) > 65536 or not re.fullmatch(r"[\x21-\x7e]+", tok):
            raise RegistryError(f"{what}: the token service sent no usable token", UNAUTHORIZED)
        return tok

    # ---- the distribution API
    def _repo(self) -> str:
        return f"/v2/{self.ref.path}"

    def get_manifest(self, reference: str, accept: tuple, limit: int) -> tuple[bytes, str, str]:
        """(bytes, media type, sha256 of the bytes) of a manifest or index; bounded by `limit`."""
        sep = "@" if reference.startswith("sha256:") else ":"
        what = f"{self.ref.host}/{self.ref.path}{sep}{reference}: manifest"
        r = self.request("GET", f"{self._repo()}/manifests/{reference}", headers={"Accept": ", ".join(accept)},
                         what=what)
        ctype = r.header("Content-Type").split(";")[0].strip()
        sent = r.header("Docker-Content-Digest")
        data = r.read_bounded(limit, what, " (limit json; raise it with --limit json=N)")
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise RegistryError(f"{what}: the manifest does not match its digest (got {digest[:19]})", INTEGRITY)
        if sent and sent.startswith("sha256:") and sent != digest:
            raise RegistryError(f"{what}: the registry's Docker-Content-Digest {sent[:19]} does not match the "
                                f"manifest it sent ({digest[:19]})", INTEGRITY)
        return data, ctype, digest

    def get_blob(self, digest: str, size: int, out: BinaryIO, on_bytes: Optional[Callable[[int], None]] = None) -> None:
        """Stream blob `digest` into `out`, hashing on the way; refused beyond `size` bytes (the
        descriptor's, from a verified manifest) or when the bytes do not match the digest."""
        what = f"{self.ref.host}/{self.ref.path}: blob {digest[:19]}"
        r = self.request("GET", f"{self._repo()}/blobs/{digest}", what=what)
        h = hashlib.sha256()
        n = 0
        try:
            while True:
                chunk = r.resp.read(min(CHUNK, size - n + 1))
                if not chunk:
                    break
                n += len(chunk)
                if n > size:
                    raise RegistryError(f"{what}: more bytes than its descriptor's {size} (refused)", INTEGRITY)
                h.update(chunk)
                out.write(chunk)
                if on_bytes:
                    on_bytes(len(chunk))
        except (OSError, http.client.HTTPException) as e:
            if isinstance(e, OSError) and getattr(e, "errno", None) == 28:
                raise RegistryError(f"{what}: no space left while downloading", INTEGRITY) from None
            raise RegistryError(f"{what}: connection failed while downloading ({_clean(str(e))})", NETWORK) from None
        finally:
            r.close()
        if n != size:
            raise RegistryError(f"{what}: {n} bytes, its descriptor says {size} (truncated or corrupt)", INTEGRITY)
        if "sha256:" + h.hexdigest() != digest:
            raise RegistryError(f"{what}: does not match its digest (corrupt or tampered; refused)", INTEGRITY)

    def has_blob(self, digest: str) -> bool:
        r = self.request("HEAD", f"{self._repo()}/blobs/{digest}", ok=(200, 404), what=f"blob {digest[:19]}")
        r.close()
        return r.status == 200

    def upload_blob(self, path: str, digest: str, size: int, chunk_size: int = 0) -> None:
        """Upload a blob: one PUT (monolithic), or PATCHes of `chunk_size` bytes then the closing PUT."""
        what = f"{self.ref.host}/{self.ref.path}: upload {digest[:19]}"
        r = self.request("POST", f"{self._repo()}/blobs/uploads/", headers={"Content-Length": "0"}, body=b"",
                         ok=(202,), what=what)
        loc = r.header("Location")
        r.close()
        if not loc:
            raise RegistryError(f"{what}: the registry gave no upload location", NETWORK)
        loc = urllib.parse.urljoin(self.base + "/", loc)
        with open(path, "rb") as f:
            if chunk_size:
                off = 0
                while off < size:
                    data = f.read(chunk_size)
                    r = self.request("PATCH", loc, what=what, ok=(202,), body=data, headers={
                        "Content-Type": "application/octet-stream", "Content-Length": str(len(data)),
                        "Content-Range": f"{off}-{off + len(data) - 1}"})
                    loc = urllib.parse.urljoin(loc, r.header("Location") or loc)
                    r.close()
                    off += len(data)
                body, length = b"", 0
            else:
                body, length = f, size
            sep = "&" if urllib.parse.urlsplit(loc).query else "?"
            r = self.request("PUT", f"{loc}{sep}digest={urllib.parse.quote(digest)}", body=body, ok=(201,),
                             what=what, rewind=lambda: f.seek(0) if not chunk_size else None,
                             headers={"Content-Type": "application/octet-stream", "Content-Length": str(length)})
            r.close()

    def put_manifest(self, reference: str, data: bytes, media_type: str) -> None:
        what = f"{self.ref.host}/{self.ref.path}: manifest {reference}"
        r = self.request("PUT", f"{self._repo()}/manifests/{reference}", body=data, ok=(201,), what=what,
                         headers={"Content-Type": media_type, "Content-Length": str(len(data))})
        r.close()


class _TLSError(RegistryError):
    def __init__(self, message: str):
        super().__init__(message, NETWORK)
