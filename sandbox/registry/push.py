"""`pysandbox image push NAME[:TAG] [DEST]`: an image of the store to a registry.

The image is packed as store/export.py packs it for `image save` (layers re-packed by descriptors,
gzip-compressed, digests computed while writing) into a private temporary directory; each blob the
registry does not already have (HEAD) is uploaded — in one PUT, or in PATCH chunks with
`chunk_size` — then the OCI manifest is put under the tag.
"""
from __future__ import annotations

import tempfile
from typing import Optional

from ..store.export import OCI_MANIFEST, pack
from ..store.images import Store, rmtree
from .client import Client
from .errors import BAD_INPUT, RegistryError
from .reference import parse


def push(name: str, dest: Optional[str] = None, *, store: Optional[Store] = None, tls_verify: bool = True,
         ca_file: Optional[str] = None, authfile: Optional[str] = None, chunk_size: int = 0,
         log=None) -> tuple[str, str]:
    """Push image `name` of the store to `dest` (a reference; default `name` itself, which must
    then name a registry). Returns (destination, manifest digest). Raises RegistryError / ImageError."""
    store = store or Store()
    local, rec = store.resolve(name)
    r = parse(dest or local)
    if r.digest:
        raise RegistryError(f"{dest or local}: push to a tag, not a digest", BAD_INPUT)
    client = Client(r, tls_verify=tls_verify, ca_file=ca_file, authfile=authfile, actions="pull,push")
    work = tempfile.mkdtemp(prefix="pysandbox-push.")
    try:
        p = pack(store, rec, work, compress=True)
        for b in [*p.layers, p.config]:
            if client.has_blob(b.digest):
                if log:
                    log(f"blob {b.digest[:19]} already there")
                continue
            client.upload_blob(b.path, b.digest, b.size, chunk_size)
            if log:
                log(f"blob {b.digest[:19]} uploaded ({b.size} bytes)")
        with open(p.manifest.path, "rb") as f:
            mbytes = f.read()
        client.put_manifest(r.tag or "latest", mbytes, OCI_MANIFEST)
        return str(r), p.manifest.digest
    finally:
        rmtree(work)
