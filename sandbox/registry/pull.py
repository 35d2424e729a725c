"""`pysandbox image pull REF`: an image from a registry into the store.

The manifest (by tag or digest; an index resolved to its linux/<this machine> entry) and the
config are fetched bounded and checked against their digests; each layer blob not already in the
store (by its config diff_id) is streamed into a staging OCI layout below the store's
downloads/ (one flocked directory per pull), hashed on the way and refused when it does not
match. The staged layout then goes through the store's own import (store/archive.py: the
hostile-tar checks, diff_id verification, the atomic move) under the store's lock — held only
for the import, not the download: on any error the store is as it was.
"""
from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
import time
from typing import Optional

from .. import fsutil
from ..store import archive
from ..store.images import ImageError, Store, human_size, normalize_name, rmtree
from .client import Client
from .errors import BAD_INPUT, INTEGRITY, RegistryError
from .reference import Reference, parse

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
ACCEPT = (OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST)
_CONFIG_TYPES = ("application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json")
MAX_LAYERS = 500                 # overlayfs stacks at most 500 lower layers (archive._MAX_LAYERS)


def _loads(data: bytes, what: str, limits) -> dict:
    try:
        doc = archive._json_loads(data, what, limits)
    except ImageError as e:
        raise RegistryError(str(e), INTEGRITY) from None
    if not isinstance(doc, dict):
        raise RegistryError(f"{what}: not a JSON object", INTEGRITY)
    return doc


def _media_type(doc: dict, header: str) -> str:
    mt = doc.get("mediaType") if isinstance(doc.get("mediaType"), str) else ""
    if not mt and "manifests" in doc:
        mt = OCI_INDEX
    if not mt and "layers" in doc:
        mt = OCI_MANIFEST
    return mt or header


def _descriptor(d, what: str) -> tuple[str, int, str]:
    if not isinstance(d, dict):
        raise RegistryError(f"{what}: malformed descriptor", INTEGRITY)
    digest, size, mt = d.get("digest"), d.get("size"), d.get("mediaType", "")
    if not isinstance(digest, str) or not archive.DIGEST_RE.match(digest):
        raise RegistryError(f"{what}: unsupported or invalid digest {str(digest)[:80]!r} (sha256 only)", INTEGRITY)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise RegistryError(f"{what}: invalid size {str(size)[:40]!r}", INTEGRITY)
    return digest, size, mt if isinstance(mt, str) else ""


def _pick_platform(index: dict, what: str) -> tuple[str, int, str]:
    mans = index.get("manifests")
    if not isinstance(mans, list) or not mans:
        raise RegistryError(f"{what}: the image index lists no manifests", INTEGRITY)
    if len(mans) > 1024:
        raise RegistryError(f"{what}: the image index lists {len(mans)} manifests, more than 1024", INTEGRITY)
    arch = archive._arch()
    for m in mans:
        p = m.get("platform") if isinstance(m, dict) else None
        if isinstance(p, dict) and p.get("os") == "linux" and p.get("architecture") == arch:
            return _descriptor(m, what)
    plats = sorted({f"{(m.get('platform') or {}).get('os')}/{(m.get('platform') or {}).get('architecture')}"
                    for m in mans if isinstance(m, dict) and isinstance(m.get("platform"), dict)})
    raise RegistryError(f"{what}: no linux/{arch} image in the index (it has {', '.join(plats)[:200] or 'none'})",
                        BAD_INPUT)


def resolve_manifest(client: Client, ref: Reference, limits) -> tuple[bytes, dict, str]:
    """The image manifest of `ref` (through one index level): (bytes, parsed, digest)."""
    data, ctype, digest = client.get_manifest(ref.reference, ACCEPT, limits.json)
    what = f"{ref}: manifest"
    doc = _loads(data, what, limits)
    mt = _media_type(doc, ctype)
    if mt in (OCI_INDEX, DOCKER_LIST):
        mdigest, size, mt2 = _pick_platform(doc, what)
        if size > limits.json:
            raise RegistryError(f"{what}: the manifest is {size} bytes, more than {limits.json} "
                                f"(limit json; raise it with --limit json=N)", INTEGRITY)
        data, ctype, digest = client.get_manifest(mdigest, ACCEPT, limits.json)
        doc = _loads(data, what, limits)
        mt = _media_type(doc, ctype)
    if doc.get("schemaVersion") == 1 or "signatures" in doc or "fsLayers" in doc:
        raise RegistryError(f"{what}: Docker schema 1 manifests are not supported", BAD_INPUT)
    if mt not in (OCI_MANIFEST, DOCKER_MANIFEST) or doc.get("schemaVersion") != 2:
        raise RegistryError(f"{what}: unsupported manifest type {mt[:80]!r}", BAD_INPUT)
    return data, doc, digest


def pull(ref: str, *, name: Optional[str] = None, store: Optional[Store] = None, tls_verify: bool = True,
         ca_file: Optional[str] = None, authfile: Optional[str] = None, progress: Optional[bool] = None,
         limits=None) -> tuple[str, dict]:
    """Pull `ref` ([HOST[:PORT]/]PATH[:TAG][@sha256:HEX]) into the store as `name` (default
    Reference.local_name()). Returns (name, record) as store.archive.import_image does. Raises
    RegistryError (.code: errors.*) for the registry's side, ImageError for what the store refuses."""
    from ..store import tarsafe
    limits = limits or tarsafe.DEFAULT_LIMITS
    r = parse(ref)
    store = store or Store()
    try:
        local = normalize_name(name or r.local_name())
    except ImageError as e:
        raise RegistryError(str(e), BAD_INPUT) from None
    client = Client(r, tls_verify=tls_verify, ca_file=ca_file, authfile=authfile)
    mbytes, manifest, mdigest = resolve_manifest(client, r, limits)
    what = str(r)
    cdigest, csize, cmt = _descriptor(manifest.get("config"), f"{what}: config")
    if cmt and cmt not in _CONFIG_TYPES:
        raise RegistryError(f"{what}: config of unsupported type {cmt[:80]!r} (not a container image?)", BAD_INPUT)
    if csize > limits.json:
        raise RegistryError(f"{what}: the config is {csize} bytes, more than {limits.json} "
                            f"(limit json; raise it with --limit json=N)", INTEGRITY)
    layers = manifest.get("layers")
    if not isinstance(layers, list) or not layers:
        raise RegistryError(f"{what}: the manifest lists no layers", INTEGRITY)
    if len(layers) > MAX_LAYERS:
        raise RegistryError(f"{what}: {len(layers)} layers, more than the {MAX_LAYERS} an overlay can stack",
                            INTEGRITY)
    ldescs = [_descriptor(d, f"{what}: layer {i + 1}") for i, d in enumerate(layers)]
    store.ensure()
    stage, lock_fd = _staging(store)
    try:
        blobs = os.path.join(stage, "blobs", "sha256")
        os.makedirs(blobs)

        def fetch(digest: str, size: int) -> str:
            path = os.path.join(blobs, digest[7:])
            if not os.path.exists(path):
                with open(path + ".part", "wb") as f:
                    client.get_blob(digest, size, f, bar.update if bar else None)
                os.rename(path + ".part", path)
            return path

        bar = None
        with open(fetch(cdigest, csize), "rb") as f:
            cbytes = f.read()
        config = _loads(cbytes, f"{what}: config", limits)
        diff_ids = (config.get("rootfs") or {}).get("diff_ids") if isinstance(config.get("rootfs"), dict) else None
        if not isinstance(diff_ids, list) or len(diff_ids) != len(ldescs):
            raise RegistryError(f"{what}: the manifest has {len(ldescs)} layers but the config "
                                f"{len(diff_ids) if isinstance(diff_ids, list) else 'no'} diff_ids", INTEGRITY)
        need = [(d, s) for (d, s, _), did in zip(ldescs, diff_ids)
                if not (isinstance(did, str) and store.has_layer(did))]
        total = sum(s for _, s in {d: s for d, s in need}.items())
        budget = archive._free_budget(store.tmp)
        if total > budget:
            raise RegistryError(f"{what}: the layers to download are {human_size(total)}, more than the "
                                f"{human_size(budget)} free in the image store", INTEGRITY)
        bar = archive.Progress(f"pulling {what}", total or None, enabled=progress)
        try:
            for d, s in need:
                fetch(d, s)
        finally:
            bar.close()
        with open(os.path.join(blobs, mdigest[7:]), "wb") as f:
            f.write(mbytes)
        with open(os.path.join(stage, "oci-layout"), "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)
        with open(os.path.join(stage, "index.json"), "w") as f:
            json.dump({"schemaVersion": 2, "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": mdigest, "size": len(mbytes)}]}, f)
        # only the import holds the store's lock (a launch from the store takes it too)
        with store.locked():
            if archive._stale_tmp(store):
                store.gc()
            return archive.import_locked(stage, local, store=store, progress=progress, limits=limits, source=what)
    finally:
        rmtree(stage)
        os.close(lock_fd)


_STALE_UNLOCKED = 3600        # a staging directory never locked (a crash right after creating it)


def _staging(store: Store) -> tuple[str, int]:
    """A private directory below the store's `downloads/` (same file system as the layers) for one
    pull's blobs, flocked while the pull runs; directories of pulls that died (their lock free)
    are removed first. Not below tmp/: an import cleans tmp/ of whatever it finds there."""
    downloads = os.path.join(store.root, "downloads")
    try:
        os.makedirs(downloads, mode=0o700, exist_ok=True)
        if stat.S_IMODE(os.lstat(downloads).st_mode) != 0o700:
            os.chmod(downloads, 0o700)
        for n in os.listdir(downloads):
            d = os.path.join(downloads, n)
            try:
                fd = fsutil.lock(os.path.join(d, ".lock"), create=False, blocking=False)
            except FileNotFoundError:
                with contextlib.suppress(OSError):
                    if time.time() - os.lstat(d).st_mtime > _STALE_UNLOCKED:
                        rmtree(d)
                continue
            except OSError:
                continue                        # a running pull
            try:
                rmtree(d)
            finally:
                os.close(fd)
        stage = tempfile.mkdtemp(prefix="pull.", dir=downloads)
        return stage, fsutil.lock(os.path.join(stage, ".lock"))
    except OSError as e:
        raise ImageError(f"cannot stage the download in {downloads}: {e.strerror or e}") from None

