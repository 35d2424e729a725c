"""The options `run`, `explain` and `export` share (Docker-named overrides of a profile), and the
compilation of a profile with them: `compile_for`, and `cache_files` (what the plan cache checks)."""
from __future__ import annotations

import os

import click

from policies.compiler import Overrides, compile_profile

from ..doctor import kernel_version as _kernel_version
from . import completion as _complete


def overrides_options(f):
    opts = [
        click.option("--profile", "profile", default="strict", show_default=True,
                     shell_complete=_complete.profiles, help="Shipped/user profile name or a YAML file path."),
        click.option("--profile-path", "profile_path", multiple=True, metavar="DIR",
                     help="Also allow the profile's extends:/seccomp.import paths to resolve into DIR."),
        click.option("--cap-add", multiple=True, metavar="CAP", help="Add a capability."),
        click.option("--cap-drop", multiple=True, metavar="CAP", help="Drop a capability."),
        click.option("-v", "--volume", "volumes", multiple=True, metavar="SRC:DST[:ro]", help="Bind mount or named volume."),
        click.option("--tmpfs", multiple=True, metavar="DST[:size=,mode=]", help="Mount a tmpfs."),
        click.option("--read-only/--read-write", "read_only", default=None, help="Read-only root (default per profile)."),
        click.option("-e", "--env", multiple=True, metavar="K=V|K", help="Set or pass an environment variable."),
        click.option("-w", "--workdir", metavar="DIR", help="Working directory inside."),
        click.option("--hostname", metavar="NAME"),
        click.option("-u", "--user", metavar="NAME|UID[:GROUP|GID]",
                     help="User inside the sandbox (names from the root's /etc/passwd; default: the image's User)."),
        click.option("--group-add", "group_add", multiple=True, metavar="GROUP|GID",
                     help="Supplementary group inside the sandbox."),
        click.option("--network", "--net", "network", metavar="none|host|NAME", shell_complete=_complete.networks),
        click.option("-p", "--publish", "ports", multiple=True, metavar="[IP:|[IPv6]:]HOSTPORT:PORT[/tcp|udp]",
                     help="Publish a port: HOSTPORT on the host to PORT inside; on one host address only with "
                          "IP: (e.g. 127.0.0.1:8080:80) or [IPv6]: (e.g. [::1]:8080:80)."),
        click.option("--add-host", "add_hosts", multiple=True, metavar="NAME:ADDR",
                     help="A name the sandbox's egress resolver and proxy answer with ADDR (network.hosts)."),
        click.option("--timeout", type=float, metavar="SECONDS", help="Kill the whole sandbox after this time."),
        click.option("-m", "--memory", metavar="SIZE"),
        click.option("--memory-swap", metavar="SIZE"),
        click.option("--memory-reservation", metavar="SIZE"),
        click.option("--cpus", metavar="N"),
        click.option("--cpu-shares", type=int, metavar="N"),
        click.option("--cpuset-cpus", metavar="LIST"),
        click.option("--pids-limit", type=int, metavar="N"),
        click.option("--blkio-weight", type=int, metavar="N"),
        click.option("--device-read-bps", multiple=True, metavar="DEV:RATE"),
        click.option("--device-write-bps", multiple=True, metavar="DEV:RATE"),
        click.option("--device-read-iops", multiple=True, metavar="DEV:RATE"),
        click.option("--device-write-iops", multiple=True, metavar="DEV:RATE"),
        click.option("--ulimit", "ulimits", multiple=True, metavar="NAME=SOFT[:HARD]"),
        click.option("--security-opt", multiple=True, metavar="OPT", help="seccomp=FILE|unconfined, no-new-privileges"),
        click.option("--image", metavar="NAME", shell_complete=_complete.images, help="Root filesystem from an image."),
        click.option("--keep", is_flag=True, help="Keep the writable layer after the run."),
        click.option("--storage-opt", "storage_opt", multiple=True, metavar="size=SIZE",
                     help="Size limit of an image's writable layer (default 2G; docs/images.md)."),
        click.option("--isolation", type=click.Choice(["namespaces", "landlock"]), default=None,
                     help="The backend: namespaces, or landlock (namespace-free; docs/security.md)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def overrides_from(kw: dict, argv=()) -> Overrides:
    return Overrides(
        argv=tuple(argv), cap_add=kw["cap_add"], cap_drop=kw["cap_drop"], volumes=kw["volumes"],
        tmpfs=kw["tmpfs"], read_only=kw["read_only"], env=kw["env"], workdir=kw["workdir"],
        hostname=kw["hostname"], network=kw["network"], ports=kw["ports"], timeout=kw["timeout"],
        add_hosts=kw.get("add_hosts", ()),
        memory=kw["memory"], memory_swap=kw["memory_swap"], memory_reservation=kw["memory_reservation"],
        cpus=kw["cpus"], cpu_shares=kw["cpu_shares"], cpuset_cpus=kw["cpuset_cpus"],
        pids_limit=kw["pids_limit"], blkio_weight=kw["blkio_weight"],
        device_read_bps=kw["device_read_bps"], device_write_bps=kw["device_write_bps"],
        device_read_iops=kw["device_read_iops"], device_write_iops=kw["device_write_iops"],
        ulimits=kw["ulimits"], security_opt=kw["security_opt"], image=kw["image"], keep=kw["keep"],
        storage_opt=kw.get("storage_opt", ()), user=kw["user"], group_add=kw["group_add"], user_db=_user_db,
        profile_path=kw["profile_path"], isolation=kw.get("isolation"))


_USER_DBS: list = []            # the ones this compile read (their files: the plan cache's deps)


def _user_db(fs):
    from ..userdb import user_db
    db = user_db(fs)
    _USER_DBS.append(db)
    return db


def image_sets_argv() -> bool:
    """The run's image has an Entrypoint or Cmd (the plan cache's per-run argv cannot carry them)."""
    return any((getattr(db, "image_config", None) or {}).get(k) for db in _USER_DBS for k in ("Entrypoint", "Cmd"))


def compile_for(kw: dict, argv=()):
    return compile_profile(kw["profile"], overrides_from(kw, argv), kernel=_kernel_version())


def cache_files(compiled, kw=None) -> list:
    """Every file the plan was compiled from (the extends chain, seccomp imports, a
    `--security-opt seccomp=FILE`) and every file whose appearance would change it (the search
    path's candidates a profile name was looked up in before the one found), and the directories
    of the search path themselves (a few stats per cached run)."""
    from policies.loader import profile_dirs
    files = list(compiled.document.files) + list(compiled.document.probed)
    # every directory of the profile search path (its mtime changes when an entry is added, removed,
    # renamed or a symlink in it is swapped: `ln -sfn`, which the target file's signature cannot see)
    files += [str(d) for d in profile_dirs()]
    sec = compiled.document.data.get("seccomp") or {}
    if isinstance(sec.get("import"), str):
        files.append(sec["import"])
    for opt in (kw or {}).get("security_opt") or ():
        k, _, v = opt.partition("=")
        if k == "seccomp" and v and v != "unconfined":
            files.append(os.path.abspath(v))
    for db in _USER_DBS:                # --user NAME, --group-add, an image's User
        files += db.files
    from .. import idmap
    if idmap.uses_helpers(compiled.plan, os.geteuid() != 0) or compiled.plan.user.map_note:
        files.extend(("/etc/subuid", "/etc/subgid"))    # `subordinate`, rootless `auto` resolved from them
    return files
