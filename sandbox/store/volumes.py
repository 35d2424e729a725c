"""Named volumes: host directories under the state directory that outlive sandboxes.

``<store>/volumes/<name>/_data`` is what gets bind-mounted; ``volume.json`` holds the metadata
(created, labels). `-v NAME:/dst` (a source that is not a path) names a volume; it is created on
first use, like Docker does. Two sandboxes may mount the same volume at once.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
from typing import Optional

from .. import fsutil
from .images import ImageError, Store, rmtree, now

_VOL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")


def is_volume_name(src: str) -> bool:
    """`-v SRC:DST`: SRC names a volume when it is not a path (Docker's rule)."""
    return bool(src) and not src.startswith(("/", ".", "~")) and "/" not in src


def _check(name: str) -> str:
    if not isinstance(name, str) or not _VOL.match(name):
        raise ImageError(f"invalid volume name {name!r} (letters, digits, _ . -; starts with a letter or digit)")
    return name


def _paths(store: Store, name: str) -> tuple[str, str, str]:
    d = os.path.join(store.volumes, _check(name))
    return d, os.path.join(d, "_data"), os.path.join(d, "volume.json")


def create_volume(name: str, *, rootless: Optional[bool] = None, labels: Optional[dict] = None,
                  owner: Optional[tuple[int, int]] = None, exist_ok: bool = False,
                  store: Optional[Store] = None) -> dict:
    store = store or Store(rootless=rootless)
    d, data, meta = _paths(store, name)
    with store.locked():
        if os.path.isfile(meta):
            if exist_ok:
                return inspect_volume(name, store=store)
            raise ImageError(f"volume {name} already exists")
        tmp = d + ".creating"
        rmtree(tmp)
        try:
            os.mkdir(tmp, 0o700)
            os.mkdir(os.path.join(tmp, "_data"), 0o755)
            if owner:
                os.chown(os.path.join(tmp, "_data"), *owner)
            info = {"Name": name, "Driver": "local", "CreatedAt": now(), "Labels": dict(labels or {})}
            fsutil.atomic_write_json(os.path.join(tmp, "volume.json"), info, mode=0o644, indent=1, sort_keys=True)
            os.rename(tmp, d)
        except OSError as e:
            rmtree(tmp)
            raise ImageError(f"cannot create volume {name}: {e.strerror}") from None
    return dict(info, Mountpoint=data)


def inspect_volume(name: str, *, rootless: Optional[bool] = None, store: Optional[Store] = None) -> dict:
    store = store or Store(rootless=rootless)
    d, data, meta = _paths(store, name)
    try:
        with open(meta) as f:
            info = json.load(f)
    except FileNotFoundError:
        raise ImageError(f"no such volume: {name}") from None
    except (OSError, ValueError) as e:
        raise ImageError(f"volume {name}: unreadable metadata ({e})") from None
    info["Mountpoint"] = data
    return info


def list_volumes(*, rootless: Optional[bool] = None, store: Optional[Store] = None) -> list[dict]:
    store = store or Store(rootless=rootless)
    out = []
    with contextlib.suppress(FileNotFoundError):
        for n in sorted(os.listdir(store.volumes)):
            if _VOL.match(n) and not n.endswith(".creating"):
                with contextlib.suppress(ImageError):
                    out.append(inspect_volume(n, store=store))
    return out


def remove_volume(name: str, *, rootless: Optional[bool] = None, store: Optional[Store] = None) -> None:
    store = store or Store(rootless=rootless)
    d, data, meta = _paths(store, name)
    with store.locked():
        if not os.path.isfile(meta):
            raise ImageError(f"no such volume: {name}")
        rmtree(d)
        if store.rootless and os.path.lexists(d):     # files of subordinate ids (a sandbox's root wrote them)
            from .idshift import remove_as_owner
            remove_as_owner(d)


def _for_subordinate(name: str, store: Store, d: str, data: str, uid_map, gid_map) -> None:
    from .idshift import check_reachable, chown_in_userns, grant_search, id_maps, subordinate
    if not subordinate(uid_map, gid_map):
        return
    check_reachable(store)
    root = next((o for i, o, _ in id_maps(uid_map) if i == 0), None)
    if root is None:
        raise ImageError(f"volume {name}: the sandbox's uid_map does not map root")
    try:
        for p in (store.volumes, d):
            grant_search(p, root)
        st = os.lstat(data)
        if st.st_uid == os.geteuid() and not os.listdir(data):
            chown_in_userns(uid_map, gid_map, data)
    except OSError as e:
        raise ImageError(f"volume {name} with subordinate ids: {e.filename or d}: {e.strerror} (the sandbox's "
                         f"root reaches the volume through an ACL entry: the state directory's file system "
                         f"must support POSIX ACLs)") from None
    except Exception as e:      # idmap.IdMapError: the maps could not be written
        raise ImageError(f"volume {name} with subordinate ids: {e}") from None


def resolve_volume(name: str, *, rootless: bool, create: bool, owner: Optional[tuple[int, int]] = None,
                   store: Optional[Store] = None, maps: tuple = ()) -> str:
    """Named volume -> its host directory (created on first use when `create`).

    owner: (uid, gid) on the host to give a new volume's directory (the sandbox's mapped root
    when root launches with a shifted uid range), so the sandbox can write to it.
    maps: (uid_map, gid_map) of a rootless sandbox: with subordinate ids, its root (a subordinate
    id) is given search on the store's volumes/ and volumes/NAME (an ACL entry for that one uid:
    they stay 0700 to everyone else) and, when still empty and the caller's, the volume itself
    (chowned in a user namespace with the sandbox's maps: store/idshift.py).
    """
    store = store or Store(rootless=rootless)
    d, data, meta = _paths(store, name)
    if not os.path.isfile(meta):
        if not create:
            raise ImageError(f"no such volume: {name} (create it with `pysandbox volume create {name}`)")
        create_volume(name, rootless=rootless, owner=owner, exist_ok=True, store=store)
    if not os.path.isdir(data) or os.path.islink(data):
        raise ImageError(f"volume {name}: {data} is missing or not a directory")
    if rootless and maps:
        _for_subordinate(name, store, d, data, *maps)
    if owner and os.geteuid() == 0:
        # A volume made by `volume create` (owned by host root) and still empty is handed to the
        # sandbox's mapped root on first use, so it can write to it (Docker does the same).
        st = os.lstat(data)
        if (st.st_uid, st.st_gid) == (0, 0) and tuple(owner) != (0, 0) and not os.listdir(data):
            os.chown(data, *owner)
    return data
