"""The peers the benchmarks compare against, defined once.

Two bwrap rows:

  bwrap equivalent  `bwrap_args_for(plan)`: bwrap arguments derived from a compiled plan (the
                    benchmarks pass `strict`'s), following the same enumeration as
                    sandbox/rootfs.py `prepare`/`finish`, plus the plan's own seccomp filter
                    (plain errno actions) through --seccomp FD. The fair peer: ratios use it.
  bwrap minimal     BWRAP_MINIMAL: every namespace, --die-with-parent, --new-session, --cap-drop
                    ALL, read-only /usr (+ usr-merge links), fresh /proc /dev /tmp, read-only /,
                    same filter. Kept for comparison with earlier numbers; it isolates less.

What `bwrap_args_for` reproduces, step for step with rootfs.py:
  namespaces        --unshare-user/-pid/-ipc/-net/-uts/-cgroup per plan.namespaces (bwrap always
                    makes a mount namespace); --uid/--gid plan.user.uid/gid; --hostname
  process           --die-with-parent (pysandbox: PDEATHSIG), --new-session (process.new_session),
                    --cap-drop ALL + --cap-add per kept capability, --clearenv + --setenv (env_allow
                    taken from the caller's environment when the args are built, env_set), --chdir
  system dirs       each of filesystem.system_dirs as rootfs._copy_entry does it: a host symlink
                    becomes --symlink with the same target, a directory or file --ro-bind (bwrap's
                    binds are nosuid,nodev, read-only ones ro: as pysandbox's), absent ones skipped
  /etc              --dir /etc; each filesystem.etc entry likewise (--symlink or --ro-bind-try);
                    /etc/hostname and /etc/hosts generated with rootfs.py's exact text, written into
                    the root tmpfs (--perms 0644 --file FD; no extra mount, as in pysandbox);
  directories       /root /home /var /var/tmp (1777) /run /mnt /opt /srv (--dir)
  /proc             --proc /proc (nosuid,nodev,noexec, as pysandbox's)
  /sys              --ro-bind /sys /sys, see below
  /dev              --dev /dev: tmpfs with null zero full random urandom tty bound from the host,
                    devpts (newinstance, ptmx link), fd/stdin/stdout/stderr links — the same set as
                    rootfs.DEV_NODES + links; then --tmpfs /dev/shm (mode 1777, 64m) as pysandbox's
  user mounts       filesystem.mounts: tmpfs -> --perms MODE --size SIZE --tmpfs TARGET,
                    bind -> --bind/--ro-bind SOURCE TARGET
  masked paths      each existing filesystem.masked_paths entry: a directory -> --perms 0555
                    --size 4096 --tmpfs P then --remount-ro P (an empty read-only tmpfs, as
                    pysandbox's); a file -> --dev-bind /dev/null P (pysandbox binds /dev/null
                    without nodev, so reads give EOF rather than EACCES — same here)
  read-only paths   see below
  last              --remount-ro /dev (non-recursive, as pysandbox), --remount-ro / (read_only)

Where bwrap (0.8.0 here) cannot express what pysandbox does, and what the row does instead:
  - identity as root: pysandbox maps sandbox uid/gid 0..65535 to host 1000000000.. (an unprivileged
    range); bwrap can only map the caller's own uid, so as root the sandbox's uid 0 is host uid 0
    (no capabilities, no_new_privs, every bind read-only — but DAC owner checks on host-root-owned
    files pass, e.g. the 0710 directory /etc/ssl/private is listable). --userns with a pre-made
    namespace mapping the unprivileged range does not work: bwrap then cannot create its own root
    ("Creating newroot failed: Value too large for defined data type"), its own host uid being
    unmapped there. Rootless, both map the caller's uid to 0.
  - /sys: bwrap cannot mount a fresh sysfs. The closest is --ro-bind /sys /sys, which is always
    recursive: the host's sysfs plus every host submount under /sys (here the /sys/fs/cgroup tmpfs
    and 10 cgroup v1/v2 hierarchies under it). The outermost submount points are covered with an
    empty read-only tmpfs, so the cgroup trees stay hidden as in pysandbox's fresh sysfs (where
    /sys/fs/cgroup is an empty directory) — but /proc/mounts lists them: 12 entries more than
    pysandbox (measured: 56 vs 44; every other entry matches by mount point and type).
    /sys/class/net lists only `lo` in both (measured).
  - read-only paths: bwrap resolves every bind source in the *host's* tree before building the
    root, so it cannot bind the sandbox's own /proc/X onto itself. Its --proc binds /proc/sys,
    /proc/sysrq-trigger, /proc/irq and /proc/bus of the new procfs read-only over themselves only
    when it finds them writable (as root here: /proc/irq and /proc/bus; rootless: none — a probe
    run finds which, so none is bound twice). The other read-only paths (strict as root:
    /proc/sys, /proc/fs; rootless also /proc/irq, /proc/bus) are --ro-bind of
    the *host's* path: read-only, a mount of the host's procfs instance; sysctl files show the
    reader's namespaces, so the values are the sandbox's own (measured: kernel.hostname reads
    `sandbox`, net/ipv4/conf lists only the sandbox's interfaces). That bind is needed: as root,
    bwrap's sandbox uid 0 is host uid 0, and sysctl files check only the global-root uid, so
    without it the sandbox (no capabilities at all) could open /proc/sys/kernel/panic and
    /proc/sys/vm/drop_caches for writing — measured (opened, never written); `bwrap minimal` has
    that hole. pysandbox's sandbox gets EACCES there (files of the unmapped host root) and EROFS
    on its own namespaced ones.
    /proc/sysrq-trigger exists neither in the host's nor in the sandbox's procfs here.
  - tmpfs flags/sizes: bwrap mounts tmpfs nosuid,nodev without noexec (pysandbox: /dev and
    /dev/shm and the masks are noexec) and cannot size the root tmpfs (pysandbox: 16m) nor /dev
    (64k); /dev/shm, /tmp and the masks get --size. bwrap's /dev also has a `core -> /proc/kcore`
    link (harmless: /proc/kcore is absent here and masked by strict where present).
  - rlimits (process.rlimits: core 0, nofile 1024/4096): bwrap has no option; applying them in the
    spawning Python (preexec_fn) would slow bwrap's spawn, so the row runs without them.
  - cgroup limits (plan.limits): bwrap has none (the API benchmark has an `api strict, no limits`
    row for that comparison). Landlock (strict's rules derived from its mounts, and the notify
    layer's recording of Landlock denials where kernel audit is off): bwrap 0.8.0 has no Landlock
    option, so the peer runs without it (pysandbox does that work, the peer does not: the ratio
    favours the peer). Time namespace, images, volumes, a private network: not expressible —
    bwrap_args_for raises ValueError for a plan that asks for them.
  - no_new_privs: bwrap always sets it (pysandbox: when the plan says so; strict does).
  - supplementary groups (plan.user.groups): not expressible (strict has none).
"""
from __future__ import annotations

import contextlib
import functools
import os
import stat
import subprocess
import tempfile

BWRAP_MINIMAL = ["--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
                 "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
                 "--symlink", "usr/lib64", "/lib64", "--symlink", "usr/sbin", "/sbin",
                 "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--remount-ro", "/"]

FILE_FD = "@fd:"        # placeholder in bwrap_args_for's output: "@fd:/etc/hosts" -> an fd with that file's data
# paths bwrap's --proc binds read-only over themselves when they are writable (bubblewrap.c)
_BWRAP_PROC_COVERED = frozenset({"/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus"})
# the nodes bwrap's --dev binds from the host (bubblewrap.c devnodes[])
_BWRAP_DEV_NODES = frozenset({"null", "zero", "full", "random", "urandom", "tty"})


def generated_files(plan) -> dict[str, bytes]:
    """The files rootfs.prepare writes into the new root (no network: default /etc/hosts text)."""
    if plan.filesystem.root != "host" or plan.filesystem.image:
        return {}
    from sandbox.rootfs import default_hosts
    h = plan.process.hostname
    return {"/etc/hostname": (h + "\n").encode(), "/etc/hosts": default_hosts(h).encode()}


def _copy_entry(host_path: str, dest: str, bind: str) -> list[str]:
    """rootfs._copy_entry in bwrap terms."""
    try:
        st = os.lstat(host_path)
    except FileNotFoundError:
        return []
    if stat.S_ISLNK(st.st_mode):
        return ["--symlink", os.readlink(host_path), dest]
    if stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):
        return [bind, host_path, dest]
    return []


def _submounts_under(top: str) -> list[str]:
    """Outermost mount points strictly below `top` in the caller's mount namespace."""
    from sandbox.cgroups.layout import unescape
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = unescape(line.split()[4])
            if mp.startswith(top + "/"):
                points.append(mp)
    points.sort()
    outer = []
    for p in points:
        if not any(p.startswith(o + "/") or p == o for o in outer):
            outer.append(p)
    return outer


@functools.lru_cache(maxsize=None)
def _proc_covers(bwrap: str, ns_args: tuple) -> frozenset:
    """Which of _BWRAP_PROC_COVERED this bwrap's --proc binds read-only itself with these
    namespace arguments (it does so only for those it finds writable): one probe run."""
    p = subprocess.run([bwrap, *ns_args, "--ro-bind", "/", "/", "--proc", "/proc",
                        "cat", "/proc/self/mountinfo"], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"bwrap probe failed: {p.stderr[-300:]}")
    points = {line.split()[4] for line in p.stdout.splitlines()}
    return frozenset(_BWRAP_PROC_COVERED & points)


def bwrap_args_for(plan, bwrap: str | None = None) -> list[str]:
    """bwrap arguments giving the isolation of `plan` (see the module docstring for the gaps).

    Generated files appear as `--file @fd:DEST DEST`: replace the placeholder with an fd open on
    generated_files(plan)[DEST] (bwrap_true does this per run). The seccomp filter and the
    command are not included. With `bwrap` (its path), one probe run finds which read-only /proc
    paths its --proc already covers, so they are not bound twice; without, every read-only path
    gets its own --ro-bind (bwrap's own cover may then sit under it: two mounts, same effect).
    """
    fs, ns, pr = plan.filesystem, plan.namespaces, plan.process
    if fs.image or any(m.type == "volume" for m in fs.mounts):
        raise ValueError("bwrap peer: images and volumes are not expressible")
    if ns.time or plan.network.mode not in ("none",):
        raise ValueError("bwrap peer: time namespace and networks are not expressible")
    # (plan.landlock: not expressible either; the peer runs without it - see the module docstring)
    a: list[str] = []
    # namespaces (bwrap always unshares the mount namespace)
    if ns.user:
        a += ["--unshare-user", "--uid", str(plan.user.uid), "--gid", str(plan.user.gid)]
    for on, flag in ((ns.pid, "--unshare-pid"), (ns.ipc, "--unshare-ipc"), (ns.net, "--unshare-net"),
                     (ns.uts, "--unshare-uts"), (ns.cgroup, "--unshare-cgroup")):
        if on:
            a.append(flag)
    ns_args = list(a)
    if ns.uts:
        a += ["--hostname", pr.hostname]
    # process
    a.append("--die-with-parent")
    if pr.new_session:
        a.append("--new-session")
    a += ["--cap-drop", "ALL"]
    for c in plan.capabilities:
        a += ["--cap-add", "CAP_" + c.upper().removeprefix("CAP_")]
    a.append("--clearenv")
    for name in pr.env_allow:
        if name in os.environ:
            a += ["--setenv", name, os.environ[name]]
    for name, value in pr.env_set:
        a += ["--setenv", name, value]
    a += ["--chdir", pr.cwd]
    # the root: rootfs.prepare
    if fs.root != "host":
        a += ["--bind", fs.root, "/"]
    else:
        for d in fs.system_dirs:
            a += _copy_entry(d, d, "--ro-bind")
        a += ["--dir", "/etc"]
        for e in fs.etc:
            a += _copy_entry("/etc/" + e, "/etc/" + e, "--ro-bind-try")
        for dest in generated_files(plan):
            a += ["--perms", "0644", "--file", FILE_FD + dest, dest]
        from sandbox.rootfs import FIXED_DIRS
        for d in FIXED_DIRS:
            a += (["--perms", "1777"] if d == "var/tmp" else []) + ["--dir", "/" + d]
    if fs.proc:
        if not ns.pid:
            raise ValueError("bwrap peer: a fresh /proc needs the pid namespace")
        a += ["--proc", "/proc"]
    if fs.sys:
        a += ["--ro-bind", "/sys", "/sys"]          # no fresh sysfs in bwrap: see the docstring
        for p in _submounts_under("/sys"):
            a += ["--perms", "0755", "--size", "4096", "--tmpfs", p, "--remount-ro", p]
    from sandbox.rootfs import DEV_NODES
    if set(DEV_NODES) != _BWRAP_DEV_NODES:
        raise ValueError(f"bwrap peer: --dev gives {sorted(_BWRAP_DEV_NODES)}, rootfs.py {sorted(DEV_NODES)}")
    a += ["--dev", "/dev", "--perms", "1777", "--size", str(64 << 20), "--tmpfs", "/dev/shm"]
    # rootfs.finish: user mounts, masked paths, read-only paths, /dev and / read-only
    for m in fs.mounts:
        if m.type == "tmpfs":
            a += ["--perms", f"{m.mode if m.mode is not None else 0o1777:o}",
                  "--size", str(m.size or 64 << 20), "--tmpfs", m.target]
        elif m.type == "bind":
            a += ["--ro-bind" if m.read_only else "--bind", m.source, m.target]
    for p in fs.masked_paths:
        try:
            st = os.lstat(p)           # same kernel: the sandbox's /proc and /sys have the host's entries
        except (FileNotFoundError, NotADirectoryError):
            continue
        if stat.S_ISDIR(st.st_mode):
            a += ["--perms", "0555", "--size", "4096", "--tmpfs", p, "--remount-ro", p]
        else:
            a += ["--dev-bind", "/dev/null", p]
    covered = _proc_covers(bwrap, tuple(ns_args)) if (bwrap and fs.proc) else frozenset()
    for p in fs.readonly_paths:
        if p in covered:
            continue                   # --proc already bound the sandbox's own one read-only
        if os.path.exists(p):
            a += ["--ro-bind", p, p]   # the host's path (bwrap resolves sources in the host tree)
    a += ["--remount-ro", "/dev"]
    if fs.read_only:
        a += ["--remount-ro", "/"]
    return a


def peer_bpf(plan) -> bytes:
    """The plan's seccomp filter for a peer: its denials as plain errno actions (a peer has no
    supervisor to hand a user-notification listener to)."""
    import dataclasses
    from sandbox import seccomp
    return seccomp.build_bpf(dataclasses.replace(plan.seccomp, notify_denials=False))


@contextlib.contextmanager
def bwrap_true(bwrap: str, bpf: bytes, plan=None):
    """Yields a function that runs /bin/true once under bwrap with the given filter:
    with `plan`, the isolation of bwrap_args_for(plan); without, BWRAP_MINIMAL."""
    args = bwrap_args_for(plan, bwrap) if plan is not None else list(BWRAP_MINIMAL)
    files = generated_files(plan) if plan is not None else {}
    tmp = tempfile.mkdtemp(prefix="bench-bwrap-")
    paths = {}
    try:
        spath = os.path.join(tmp, "seccomp.bpf")
        with open(spath, "wb") as f:
            f.write(bpf)
        for i, (dest, data) in enumerate(files.items()):
            paths[dest] = os.path.join(tmp, f"file{i}")
            with open(paths[dest], "wb") as f:
                f.write(data)
        slots = [(i, paths[x[len(FILE_FD):]]) for i, x in enumerate(args) if x.startswith(FILE_FD)]

        def run(argv=("/bin/true",), capture=False):
            fds = [os.open(spath, os.O_RDONLY)]
            try:
                argl = list(args)
                for i, path in slots:
                    fds.append(os.open(path, os.O_RDONLY))
                    argl[i] = str(fds[-1])
                p = subprocess.run([bwrap, *argl, "--seccomp", str(fds[0]), *argv],
                                   stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, pass_fds=fds)
            finally:
                for fd in fds:
                    os.close(fd)
            if p.returncode != 0 and not capture:
                raise SystemExit(f"bwrap failed: {p.stderr.decode()[-300:]}")
            return p
        yield run
    finally:
        for path in [*paths.values(), os.path.join(tmp, "seccomp.bpf")]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        os.rmdir(tmp)


# crun refuses a hybrid cgroup layout (v1 controllers plus /sys/fs/cgroup/unified). It runs in a
# private mount + cgroup namespace whose /sys/fs/cgroup is a fresh tmpfs holding only the v1
# hierarchies (bind mounts of the host's): crun sees a legacy (v1) layout and creates its cgroups
# there, as it would on a v1 host. The runs are timed inside that namespace by a small Python
# loop (CRUN_SERVER) told "run" on stdin, the same way the other rows are timed (subprocess.run).
CRUN_SETUP = r"""
set -e
old=$(mktemp -d /tmp/bench-crun-cg.XXXXXX)
mount --rbind /sys/fs/cgroup "$old"
mount -t tmpfs -o mode=755 tmpfs /sys/fs/cgroup
for c in $(ls "$old"); do
  [ "$c" = unified ] && continue
  mountpoint -q "$old/$c" || continue
  mkdir /sys/fs/cgroup/$c && mount --bind "$old/$c" /sys/fs/cgroup/$c
done
umount -l "$old"; rmdir "$old"
exec "$@"
"""
CRUN_SERVER = r"""
import os, subprocess, sys, time
crun, bundle = sys.argv[1:3]
i = 0
for line in sys.stdin:
    i += 1
    cid = f"bench-crun-{os.getpid()}-{i}"
    t = time.perf_counter()
    p = subprocess.run([crun, "run", "--bundle", bundle, cid], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dt = time.perf_counter() - t
    if p.returncode:
        subprocess.run([crun, "delete", "-f", cid], capture_output=True)
    print(dt if p.returncode == 0 else "ERR " + p.stderr.decode()[-200:].replace("\n", " "), flush=True)
"""


@contextlib.contextmanager
def crun_true(crun: str, profile: str = "strict"):
    """Yields a function that runs /bin/true once with `crun run` (create + start + wait + delete)
    of the OCI bundle `pysandbox export -f oci PROFILE` writes (the same namespaces, id map,
    capabilities, no_new_privs, seccomp rules, read-only root, masked paths, rlimits and cgroup
    limits; the gaps are in the bundle's NOTES.txt) and returns the seconds it took. Root only."""
    import shutil
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tmp = tempfile.mkdtemp(prefix="bench-crun-")
    bundle = os.path.join(tmp, "bundle")
    proc = None
    try:
        subprocess.run([os.path.join(repo, ".venv", "bin", "pysandbox"), "export", "-f", "oci", profile,
                        "-o", bundle, "--", "/bin/true"], check=True, capture_output=True)
        proc = subprocess.Popen(["unshare", "-m", "-C", "--propagation", "private", "sh", "-c", CRUN_SETUP, "sh",
                                 sys.executable, "-I", "-c", CRUN_SERVER, crun, bundle],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

        def run():
            proc.stdin.write("run\n")
            proc.stdin.flush()
            out = proc.stdout.readline()
            if not out or out.startswith("ERR"):
                raise RuntimeError(f"crun failed: {out.strip() or 'no answer'}")
            return float(out)
        yield run
    finally:
        if proc is not None:
            proc.stdin.close()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
