"""`pysandbox export`: write a profile for other engines (OCI runtimes, docker/podman, Kubernetes).

    pysandbox export --format oci    PROFILE -o DIR [-- CMD...]   DIR/config.json + DIR/rootfs/
    pysandbox export --format docker PROFILE -o DIR               DIR/seccomp.json + DIR/run.sh (docker run ...)
    pysandbox export --format podman PROFILE -o DIR               DIR/seccomp.json + DIR/run.sh (podman run --rootfs ...)
    pysandbox export --format k8s    PROFILE -o DIR               DIR/pod.yaml + DIR/seccomp.json

The same override flags as `run` apply (--cap-add, -v, --memory, ...). The pure conversion is in
`policies.export`; this module only compiles the profile, asks the host what the exporter needs
(symlinked system directories, device numbers) and writes files.

Exit codes: 0 written; 2 usage/profile error, or the format cannot carry a control the plan
enforces (the export would be weaker; `--allow-weaker` writes it anyway, listing what is lost in
DIR/NOTES.txt); 1 the exported config.json fails the OCI schema (a bug: please report).
"""
from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import click

from policies import export as X
from policies.plan import Plan

from .options import compile_for, overrides_options

FORMATS = ("oci", "docker", "podman", "k8s")
DEFAULT_IMAGE = "debian:bookworm-slim"
# Files podman always bind into a container: mount points it needs in a --rootfs directory that
# the container's (user-namespaced) root cannot create itself.
PODMAN_MOUNTPOINTS = (("etc", "dir"), ("etc/hostname", "file"), ("etc/hosts", "file"),
                      ("etc/resolv.conf", "file"), ("run", "dir"), ("run/.containerenv", "file"),
                      ("run/podman-init", "file"))


class ExportFailed(click.ClickException):
    exit_code = 2


class SchemaFailed(click.ClickException):
    exit_code = 1


class RealHost(X.HostView):
    """The host as the exporter sees it (lstat only; nothing is opened or changed)."""

    def kind(self, path: str, follow: bool = False) -> str:
        try:
            st = os.stat(path) if follow else os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return "missing"
        except OSError:
            return "other"
        if stat.S_ISLNK(st.st_mode):
            return "link"
        if stat.S_ISDIR(st.st_mode):
            return "dir"
        if stat.S_ISREG(st.st_mode):
            return "file"
        return "other"

    def readlink(self, path: str) -> str:
        return os.readlink(path)

    def device(self, path: str):
        try:
            st = os.stat(path)
        except OSError:
            return None
        if not stat.S_ISBLK(st.st_mode):
            return None
        return os.major(st.st_rdev), os.minor(st.st_rdev)


@dataclass
class Result:
    files: list = field(default_factory=list)      # paths written
    losses: list = field(default_factory=list)     # policies.export.Loss
    command: Optional[str] = None                  # shell line to run the export
    hint: str = ""


def _refuse_weaker(fmt: str, losses, allow_weaker: bool) -> None:
    weaker = [l for l in losses if l.weaker]
    if weaker and not allow_weaker:
        what = "; ".join(f"{l.control} ({l.detail})" for l in weaker)
        raise ExportFailed(f"the {fmt} format cannot carry: {what} -- the export would be weaker than "
                           "`pysandbox run`; pass --allow-weaker to write it anyway")


def _write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


def _make_rootfs(root: Path, plan: Plan, config: dict, host: X.HostView, extra=()) -> None:
    """Create the bundle's rootfs for `root: host`: the host's symlinked system directories as
    the same symlinks, and every mount point (so a user-namespaced root needs no write access)."""
    root.mkdir(exist_ok=True)
    for rel, target in X.rootfs_layout(plan, host)[0]:
        p = root / rel
        if not os.path.lexists(p):
            os.symlink(target, p)
    for rel, kind in list(X.rootfs_skeleton(config, host)) + list(extra):
        p = root / rel
        if os.path.lexists(p):
            continue
        if kind == "dir":
            p.mkdir(mode=0o755)
        else:
            p.touch(mode=0o644)


def _run_script(engine: str, plan: Plan, line: str) -> str:
    var = engine.upper()
    assert line.startswith(f"{engine} run ")
    body = f"${{{var}:-{engine}}} run ${{PYSANDBOX_RUN_OPTS:-}} " + line[len(engine) + 5:]
    return (f"#!/bin/sh\n# pysandbox export --format {engine} (profile {plan.name})\n"
            f"# {var}: the engine command with global options (default: {engine});\n"
            f"# PYSANDBOX_RUN_OPTS: extra `run` options (e.g. --ulimit nproc=N:N where root lacks CAP_SYS_RESOURCE).\n"
            f"exec {body}\n")


def _notes(fmt: str, losses, hint: str) -> str:
    lines = [f"# pysandbox export --format {fmt}", ""]
    if hint:
        lines += [hint, ""]
    if losses:
        lines.append("What this format does not carry (WEAKER: isolation is weaker than `pysandbox run`):")
        lines += [f"- {l}" for l in losses]
    else:
        lines.append("Every control of the plan is carried by this export.")
    return "\n".join(lines) + "\n"


def export_plan(plan: Plan, fmt: str, outdir, *, image: Optional[str] = None, allow_weaker: bool = False,
                force: bool = False, host: Optional[X.HostView] = None,
                cgroups_path: Optional[str] = None) -> Result:
    """Write the export of `plan` in `fmt` to `outdir` (created). Raises ExportFailed/SchemaFailed
    before writing anything when the export would be weaker (unless allowed) or invalid."""
    if fmt not in FORMATS:
        raise ExportFailed(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    host = host or RealHost()
    out = Path(outdir).absolute()
    res = Result()
    try:
        sc, sc_losses = X.seccomp_section(plan)
        if sc is not None:
            errs = X.validate_oci({"ociVersion": X.OCI_VERSION, "linux": {"seccomp": sc}})
            if errs:
                raise SchemaFailed("exported seccomp profile fails the OCI schema: " + "; ".join(errs[:3]))
        if fmt == "oci":
            config, losses = X.oci_config(plan, host=host, cgroups_path=cgroups_path)
            errs = X.validate_oci(config)
            if errs:
                raise SchemaFailed("exported config.json fails the OCI runtime-spec schema: " + "; ".join(errs[:3]))
            if plan.process.env_allow:
                losses.append(X.Loss("process.env_allow", "pass-through variables are not written into "
                                     f"config.json: {', '.join(plan.process.env_allow)}", False))
            res.command = f"cd {out} && crun run pysandbox-{plan.name}"
            res.hint = (f"Run with: {res.command}   (or runc run). On hosts with a hybrid cgroup layout crun "
                        "refuses to start: run it where only cgroup v1 or only cgroup v2 is mounted.")
        elif fmt in ("docker", "podman"):
            rootfs = str(out / "rootfs") if fmt == "podman" and plan.filesystem.root == "host" else None
            argv, losses = X.run_argv(plan, engine=fmt, seccomp_file=str(out / "seccomp.json"),
                                      image=image or DEFAULT_IMAGE, rootfs=rootfs, host=host)
            losses = sc_losses + losses
            res.command = X.shell_line(argv)
            res.hint = f"Run with: sh {out / 'run.sh'}"
        else:
            docs, losses = X.k8s_manifests(plan, image=image or DEFAULT_IMAGE)
            prof = docs[0]["spec"]["containers"][0]["securityContext"]["seccompProfile"].get("localhostProfile")
            res.hint = (f"Install {out / 'seccomp.json'} on every node as /var/lib/kubelet/seccomp/{prof}, "
                        f"then: kubectl apply -f {out / 'pod.yaml'}") if prof else f"kubectl apply -f {out / 'pod.yaml'}"
        _refuse_weaker(fmt, losses, allow_weaker)
        res.losses = losses

        out.mkdir(parents=True, exist_ok=True)
        marker = out / {"oci": "config.json", "docker": "run.sh", "podman": "run.sh", "k8s": "pod.yaml"}[fmt]
        if marker.exists() and not force:
            raise ExportFailed(f"{marker} exists (pass --force to overwrite)")
        if sc is not None:
            res.files.append(_write(out / "seccomp.json", json.dumps(sc, indent=2) + "\n"))
        if fmt == "oci":
            res.files.append(_write(out / "config.json", json.dumps(config, indent=2) + "\n"))
            if plan.filesystem.root == "host":
                _make_rootfs(out / "rootfs", plan, config, host)
                res.files.append(out / "rootfs")
        elif fmt in ("docker", "podman"):
            if rootfs:
                config, _ = X.oci_config(plan, host=host)
                _make_rootfs(Path(rootfs), plan, config, host, PODMAN_MOUNTPOINTS)
                res.files.append(Path(rootfs))
            res.files.append(_write(out / "run.sh", _run_script(fmt, plan, res.command), 0o755))
        else:
            import yaml
            res.files.append(_write(out / "pod.yaml", yaml.safe_dump_all(docs, sort_keys=False)))
        res.files.append(_write(out / "NOTES.txt", _notes(fmt, res.losses, res.hint)))
    except X.ExportError as e:
        raise ExportFailed(str(e)) from None
    except OSError as e:
        raise ExportFailed(f"cannot write {e.filename or out}: {e.strerror}") from None
    return res


@click.command("export", context_settings={"allow_interspersed_args": True})
@overrides_options
@click.option("-f", "--format", "fmt", type=click.Choice(FORMATS), required=True,
              help="oci: runtime bundle (crun/runc); docker/podman: seccomp JSON + run flags; "
                   "k8s: Pod + Localhost seccomp JSON.")
@click.option("-o", "--output", "outdir", required=True, type=click.Path(file_okay=False),
              help="Directory to write (created).")
@click.option("--allow-weaker", is_flag=True,
              help="Write the export even where the format cannot carry a control (listed in NOTES.txt).")
@click.option("--force", is_flag=True, help="Overwrite an earlier export in DIR.")
@click.option("--cgroups-path", metavar="PATH", help="oci: linux.cgroupsPath.")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def export(fmt, outdir, allow_weaker, force, cgroups_path, args, **kw):
    """Export a profile for other engines.

    pysandbox export -f oci|docker|podman|k8s PROFILE -o DIR [-- CMD ARGS...]

    PROFILE (or --profile) is a shipped/user profile name or a file; CMD replaces the
    profile's argv. docker and k8s use --image (default debian:bookworm-slim) in place of
    `root: host`; podman runs from DIR/rootfs with the host's system directories bound read-only.
    """
    args = list(args)
    ctx = click.get_current_context()
    if ctx.get_parameter_source("profile") != click.core.ParameterSource.COMMANDLINE:
        if not args:
            raise click.UsageError("missing PROFILE (a profile name or file)")
        kw["profile"] = args.pop(0)
    image = kw.get("image")
    kw["image"] = None                 # for export --image names the engine image, not a pysandbox root
    compiled = compile_for(kw, tuple(args))
    res = export_plan(compiled.plan, fmt, outdir, image=image, allow_weaker=allow_weaker,
                      force=force, cgroups_path=cgroups_path)
    for l in res.losses:
        text = str(l)
        if len(text) > 200:
            text = text[:197] + "..."          # the full text is in NOTES.txt
        click.echo(f"pysandbox export: {text}", err=True)
    for f in res.files:
        click.echo(f"wrote {f}")
    if res.command and fmt != "oci":
        click.echo(res.command)
    click.echo(res.hint)
    return 0


COMMANDS = [export]
