"""CLI: `pysandbox image ...`, `pysandbox volume ...`, `pysandbox diff ID`, `pysandbox commit ID NAME`.

Errors are one line; exit status 2 for bad input (unknown image, bad archive, bad name),
125 when the store itself cannot be used.
"""
from __future__ import annotations

import contextlib
import json

import click

from . import completion as _complete
from ..store.archive import import_image
from ..store.images import ImageError, Store, human_size


class _Fail(click.ClickException):
    def __init__(self, msg: str, code: int = 2):
        super().__init__(msg)
        self.exit_code = code


def _store() -> Store:
    return Store()


def _limits(items):
    from ..store.tarsafe import DEFAULT_LIMITS
    try:
        return DEFAULT_LIMITS.with_overrides(items)
    except ValueError as e:
        raise _Fail(str(e)) from None


def _run(fn, *a, **kw):
    try:
        return fn(*a, **kw)
    except ImageError as e:
        raise _Fail(str(e)) from None
    except PermissionError as e:
        raise _Fail(f"permission denied: {e.filename or e}", 125) from None


# --------------------------------------------------------------------------- image

@click.group("image", help="Manage images (layer store).")
def image():
    pass


@image.command("import", help="Import an OCI layout (dir/tar), a `docker save` tarball, or a rootfs tarball/dir.")
@click.argument("path", type=click.Path(exists=False))
@click.argument("name", required=False)
@click.option("--ref", help="OCI layout: the manifest's ref.name to import (default: the only/first one).")
@click.option("--devices", type=click.Choice(["reject", "skip"]), default="reject", show_default=True,
              help="Device nodes in layers: refuse the import, or drop them.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@click.option("--limit", "limits", multiple=True, metavar="NAME=VALUE",
              help="Raise a bound of the import (repeatable; sizes take k/M/G/T): header, members, path, depth, "
                   "file_size, size, stream, ratio, json, json_depth. Defaults in docs/images.md.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the image id.")
def image_import(path, name, ref, devices, progress, limits, quiet):
    n, rec = _run(import_image, path, name, store=_store(), ref=ref, devices=devices, progress=progress,
                  limits=_limits(limits))
    if quiet:
        click.echo(rec["id"])
    else:
        click.echo(f"imported {n} {rec['id'][7:19]} ({len(rec['layers'])} layers)")


@image.command("save", help="Write an image to a file podman/docker load: docker-archive (default), "
                             "oci-archive, or an OCI layout directory (oci-dir).")
@click.argument("name", shell_complete=_complete.images)
@click.option("-o", "--output", required=True, type=click.Path(), help="The file (or directory for oci-dir).")
@click.option("--format", "fmt", type=click.Choice(["docker-archive", "oci-archive", "oci-dir"]),
              default="docker-archive", show_default=True)
@click.option("-q", "--quiet", is_flag=True)
def image_save(name, output, fmt, quiet):
    from ..store.export import save
    n, rec, digest = _run(save, _store(), name, output, fmt)
    if not quiet:
        click.echo(f"saved {n} to {output} ({fmt}, manifest {digest[:19]})")


def _registry(fn, *a, **kw):
    from ..registry.errors import RegistryError
    try:
        return _run(fn, *a, **kw)
    except RegistryError as e:
        raise _Fail(str(e), e.code) from None


def _tls_options(f):
    f = click.option("--tls-verify", type=click.BOOL, default=True, show_default=True,
                     help="Verify the registry's TLS certificate; false (only when asked) also allows plain HTTP.")(f)
    f = click.option("--ca-file", type=click.Path(), help="CA certificates (PEM) to verify the registry with.")(f)
    return click.option("--authfile", type=click.Path(),
                        help="Credentials file (default: $REGISTRY_AUTH_FILE, podman's auth.json, "
                             "~/.docker/config.json).")(f)


@image.command("pull", help="Pull REF ([HOST[:PORT]/]PATH[:TAG][@sha256:DIGEST]) from a registry into the store. "
                            "Exit 3 unauthorized, 4 not found, 5 digest mismatch or a bound exceeded, 6 network/TLS.")
@click.argument("ref")
@click.argument("name", required=False)
@_tls_options
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@click.option("--limit", "limits", multiple=True, metavar="NAME=VALUE", help="As for `image import --limit`.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the image id.")
def image_pull(ref, name, tls_verify, ca_file, authfile, progress, limits, quiet):
    from ..registry.pull import pull
    n, rec = _registry(pull, ref, name=name, store=_store(), tls_verify=tls_verify, ca_file=ca_file,
                       authfile=authfile, progress=progress, limits=_limits(limits))
    click.echo(rec["id"] if quiet else f"pulled {n} {rec['id'][7:19]} ({len(rec['layers'])} layers)")


@image.command("push", help="Push image NAME to DEST ([HOST[:PORT]/]PATH[:TAG]; default NAME). "
                            "Exit codes as for pull.")
@click.argument("name", shell_complete=_complete.images)
@click.argument("dest", required=False)
@_tls_options
@click.option("--chunk-size", default="0", metavar="SIZE",
              help="Upload blobs in chunks of SIZE (k/M/G) instead of one request each.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the manifest digest.")
def image_push(name, dest, tls_verify, ca_file, authfile, chunk_size, quiet):
    from ..registry.push import push
    from ..store.tarsafe import parse_size
    try:
        chunk = 0 if chunk_size.strip() == "0" else parse_size(chunk_size, "--chunk-size")
    except ValueError as e:
        raise _Fail(str(e)) from None
    log = None if quiet else (lambda m: click.echo(m, err=True))
    where, digest = _registry(push, name, dest, store=_store(), tls_verify=tls_verify, ca_file=ca_file,
                              authfile=authfile, chunk_size=chunk, log=log)
    click.echo(digest if quiet else f"pushed {where} {digest}")


@image.command("ls", help="List images.")
@click.option("--json", "as_json", is_flag=True)
@click.option("-q", "--quiet", is_flag=True, help="Only names.")
def image_ls(as_json, quiet):
    st = _store()
    imgs = _run(st.images)
    if as_json:
        click.echo(json.dumps([dict(r, name=n, size=_run(st.image_size, r)) for n, r in sorted(imgs.items())],
                              indent=1))
        return
    if quiet:
        for n in sorted(imgs):
            click.echo(n)
        return
    rows = [("NAME", "IMAGE ID", "CREATED", "LAYERS", "SIZE")]
    for n, r in sorted(imgs.items()):
        rows.append((n, r["id"][7:19], r.get("created", "")[:19], str(len(r["layers"])),
                     human_size(_run(st.image_size, r))))
    _table(rows)


@image.command("history", help="Layers of an image, newest first, with sizes and created-by.")
@click.argument("name", shell_complete=_complete.images)
@click.option("--no-trunc", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
def image_history(name, no_trunc, as_json):
    st = _store()
    n, rec = _run(st.resolve, name)
    layers = list(rec["layers"])
    rows_data = []
    li = 0
    for h in rec.get("history") or []:
        if h.get("empty_layer"):
            rows_data.append((None, h, 0))
        else:
            d = layers[li] if li < len(layers) else None
            li += 1
            rows_data.append((d, h, _run(st.layer_info, d).get("size", 0) if d else 0))
    while li < len(layers):      # layers without history entries
        rows_data.append((layers[li], {}, _run(st.layer_info, layers[li]).get("size", 0)))
        li += 1
    rows_data.reverse()
    if as_json:                  # ours, and the keys of `docker history --format json` (ID: the image's on top)
        click.echo(json.dumps([{"layer": d, "size": s, **h,
                                "ID": rec["id"] if i == 0 else "<missing>", "CreatedAt": h.get("created", ""),
                                "CreatedBy": h.get("created_by", ""), "Size": human_size(s),
                                "Comment": h.get("comment", "")} for i, (d, h, s) in enumerate(rows_data)], indent=1))
        return
    rows = [("LAYER", "CREATED", "CREATED BY", "SIZE", "COMMENT")]
    for d, h, s in rows_data:
        by = h.get("created_by", "")
        if not no_trunc and len(by) > 45:
            by = by[:44] + "…"
        rows.append(((d[7:19] if d and not no_trunc else (d or "<missing>")) if d else "<empty>",
                     h.get("created", "")[:19], by, human_size(s), h.get("comment", "")))
    _table(rows)


@image.command("inspect", help="An image's record (id, layers with sizes, history, config) as JSON.")
@click.argument("names", nargs=-1, required=True, shell_complete=_complete.images)
@click.option("--json", "as_json", is_flag=True, help="(always JSON; accepted for symmetry)")
def image_inspect(names, as_json):
    st = _store()
    out = []
    for name in names:
        n, rec = _run(st.resolve, name)
        layers = [dict(_run(st.layer_info, d), digest=d, path=st.layer_diff(d)) for d in rec["layers"]]
        size = sum(l.get("size", 0) for l in layers)
        out.append(dict(rec, name=n, layers=layers, size=size, **_docker_inspect(rec, n, size)))
    click.echo(json.dumps(out, indent=1, sort_keys=True))


def _docker_inspect(rec: dict, name: str, size: int) -> dict:
    """The keys of `docker`/`podman image inspect` beside the record's own: Id, RepoTags, Created,
    Architecture, Os, Config (the OCI config's), RootFS, History (OCI history entries), Size."""
    oci = {}
    if rec.get("config_json"):
        with contextlib.suppress(ValueError):
            oci = json.loads(rec["config_json"])
    hist = [{k: h[k] for k in ("created", "created_by", "author", "comment", "empty_layer") if h.get(k)}
            for h in rec.get("history") or []]
    return {"Id": rec["id"], "RepoTags": [name], "Created": rec.get("created", ""),
            "Architecture": oci.get("architecture", "amd64"), "Os": oci.get("os", "linux"),
            "Config": rec.get("config") or {}, "RootFS": {"Type": "layers", "Layers": list(rec["layers"])},
            "History": hist, "Size": size}


@image.command("rm", help="Remove images (layers no other image or kept container uses are deleted).")
@click.argument("names", nargs=-1, required=True, shell_complete=_complete.images)
def image_rm(names):
    st = _store()
    for name in names:
        n, removed = _run(st.remove_image, name)
        click.echo(f"untagged {n}")
        for d in removed:
            click.echo(f"deleted layer {d[7:19]}")


@image.command("tag", help="Give an image another name.")
@click.argument("src", shell_complete=_complete.images)
@click.argument("dst")
def image_tag(src, dst):
    click.echo(_run(_store().tag, src, dst))


@image.command("containers", help="List kept writable layers (runs with --keep).")
@click.option("--json", "as_json", is_flag=True)
def image_containers(as_json):
    from ..store.containers import list_containers
    found = _run(list_containers, _store())
    if as_json:
        click.echo(json.dumps(found, indent=1, sort_keys=True))
        return
    rows = [("CONTAINER", "NAME", "IMAGE", "CREATED", "STATUS")]
    for m in found:
        rows.append((m["id"], m.get("name") or "", m.get("image", ""), m.get("created", "")[:19], m.get("status", "")))
    _table(rows)


@image.command("prune", help="Delete kept writable layers (--containers), unused layers and stale imports.")
@click.option("--containers", is_flag=True, help="Also remove every exited kept container.")
@click.option("--build-cache", is_flag=True, help="Also forget every cached `pysandbox build` step (and its layers).")
def image_prune(containers, build_cache):
    from ..store.containers import list_containers, remove_container
    st = _store()
    if build_cache:
        _prune_build_cache(st)
    if containers:
        for m in _run(list_containers, st):
            if m.get("status") != "running":
                click.echo(f"removed container {_run(remove_container, st, m['id'])}")
    for d in _run(st.gc):
        click.echo(f"deleted layer {d[7:19]}")


def _prune_build_cache(st: Store) -> None:
    from ..store.images import prune_build_cache
    click.echo(f"forgot {_run(prune_build_cache, st)} cached build steps")


# --------------------------------------------------------------------------- diff / commit

@click.command("diff", help="Changes of a kept sandbox's writable layer: A added, C changed, D deleted. "
                             "CONTAINER: the run's --name or its id.")
@click.argument("container_id", metavar="CONTAINER", shell_complete=_complete.containers)
@click.option("--json", "as_json", is_flag=True, help="[{kind, path}]")
def diff_cmd(container_id, as_json):
    from ..store.containers import changes
    found = _run(changes, _store(), container_id)
    if as_json:
        click.echo(json.dumps([{"kind": k, "path": p} for k, p in found], indent=1))
        return
    for kind, path in found:
        click.echo(f"{kind} {path}")


@click.command("commit", help="Turn a kept sandbox's writable layer into a new image. CONTAINER: the run's "
                               "--name or its id.")
@click.argument("container_id", metavar="CONTAINER", shell_complete=_complete.containers)
@click.argument("name")
@click.option("-m", "--message", default="", help="Commit message (history comment).")
@click.option("-a", "--author", default="")
@click.option("--rm", "remove", is_flag=True, help="Remove the kept container afterwards.")
@click.option("--limit", "limits", multiple=True, metavar="NAME=VALUE",
              help="Raise a bound of the new layer, as for `image import --limit`.")
def commit_cmd(container_id, name, message, author, remove, limits):
    from ..store.containers import commit, remove_container
    st = _store()
    n, rec = _run(commit, st, container_id, name, message=message, author=author, limits=_limits(limits))
    if remove:
        _run(remove_container, st, container_id)
    click.echo(f"{n} {rec['id'][7:19]}")


@click.command("rm-container", help="Remove a kept writable layer.", hidden=True)
@click.argument("container_id", shell_complete=_complete.containers)
def rm_container_cmd(container_id):
    from ..store.containers import remove_container
    click.echo(_run(remove_container, _store(), container_id))


# --------------------------------------------------------------------------- volume

@click.group("volume", help="Manage named volumes.")
def volume():
    pass


@volume.command("create")
@click.argument("name")
@click.option("--label", "labels", multiple=True, help="KEY=VALUE")
def volume_create(name, labels):
    from ..store.volumes import create_volume
    lab = {}
    for l in labels:
        k, sep, v = l.partition("=")
        if not k:
            raise _Fail(f"invalid label {l!r} (KEY=VALUE)")
        lab[k] = v
    _run(create_volume, name, labels=lab)
    click.echo(name)


@volume.command("ls")
@click.option("-q", "--quiet", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
def volume_ls(quiet, as_json):
    from ..store.volumes import list_volumes
    vols = _run(list_volumes)
    if as_json:
        click.echo(json.dumps(vols, indent=1, sort_keys=True))
        return
    if quiet:
        for v in vols:
            click.echo(v["Name"])
        return
    rows = [("DRIVER", "VOLUME NAME", "CREATED")]
    for v in vols:
        rows.append((v.get("Driver", "local"), v["Name"], v.get("CreatedAt", "")))
    _table(rows)


@volume.command("inspect")
@click.argument("names", nargs=-1, required=True, shell_complete=_complete.volumes)
@click.option("--json", "as_json", is_flag=True, help="(always JSON; accepted for symmetry)")
def volume_inspect(names, as_json):
    from ..store.volumes import inspect_volume
    click.echo(json.dumps([_run(inspect_volume, n) for n in names], indent=1, sort_keys=True))


@volume.command("rm")
@click.argument("names", nargs=-1, required=True, shell_complete=_complete.volumes)
def volume_rm(names):
    from ..store.volumes import remove_volume
    for n in names:
        _run(remove_volume, n)
        click.echo(n)


def _table(rows) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


COMMANDS = [image, volume, diff_cmd, commit_cmd]
