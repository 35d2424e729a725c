"""Every documented seccomp control proven on the real kernel, under `strict` and `default`.

For each call below, a program inside a real sandbox (root and rootless) makes the call with
its real arguments and gets the errno - or the SIGSYS kill - the policy documents
(docs/seccomp.md), and a neighbouring legitimate call still works:

* i386 `int 0x80` and x32 (nr | 0x40000000) syscalls from a static 64-bit program built here
  with gcc (inline asm: no -m32 toolchain needed) -> the process is killed (exit 159, SIGSYS);
* clone / unshare / clone3 with CLONE_NEWNS NEWUTS NEWIPC NEWPID NEWNET NEWCGROUP NEWTIME;
* mknod / mknodat of character and block devices (a FIFO and a regular file still work);
* ioctl TIOCSTI and TIOCLINUX (TCGETS still works);
* io_uring_setup, userfaultfd (and /dev/userfaultfd: not in the sandbox's /dev),
  perf_event_open, kexec_load / kexec_file_load, swapon / swapoff, iopl / ioperm,
  settimeofday / clock_settime / adjtimex and clock_adjtime setting the clock, umount2.

`strict` promises the denial in its filter (EPERM; clone3 ENOSYS so that glibc falls back to
clone, whose flags the filter can see) and records each EPERM once in the audit log (seccomp
user notification). `default` promises Docker's decisions: where Docker's filter allows the
call (mknod, ioctl, adjtimex) the kernel refuses it - the test checks the plan says "allow"
there and that the kernel's answer is still a refusal. Nothing is simulated; the only thing
this kernel cannot show is x32 itself (not built in: it would answer ENOSYS without a filter,
so the kill is the filter's), which the test checks on the host first.

Harmless if a hole is there: every call is made inside the sandbox, none of them can succeed
without capabilities of the initial user namespace (the clock is "set" to its current value,
adjtimex sets the tick to its usual 10000, swapon names a file that does not exist).
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import tempfile

import pytest

from conftest import HOST_PYTHON

import audit
from audit import reader

EPERM, ENOSYS, ENOENT, ENOTTY = errno.EPERM, errno.ENOSYS, errno.ENOENT, errno.ENOTTY

ABI_C = r"""
/* ABI probe: native getpid, then the same call through another ABI the filter must kill. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(int argc, char **argv) {
    long r;
    printf("native %ld\n", (long)syscall(SYS_getpid));
    fflush(stdout);
    if (argc > 1 && strcmp(argv[1], "int80") == 0) {
        /* i386 getpid is 20 */
        __asm__ volatile ("int $0x80" : "=a"(r) : "0"(20L) : "memory");
    } else if (argc > 1 && strcmp(argv[1], "x32") == 0) {
        /* x32 getpid: __X32_SYSCALL_BIT | 39 */
        __asm__ volatile ("syscall" : "=a"(r) : "0"(0x40000000L | 39L) : "rcx", "r11", "memory");
    } else {
        return 2;
    }
    printf("survived %ld\n", r);
    return 0;
}
"""

PROBE = r"""
import ctypes, json, os, struct, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
AT_FDCWD = (1 << 64) - 100

def call(nr, *args):
    cargs = []
    keep = []
    for a in args:
        if isinstance(a, bytes):
            b = ctypes.create_string_buffer(a, len(a) + 1)
            keep.append(b)
            cargs.append(ctypes.c_void_p(ctypes.addressof(b)))
        else:
            cargs.append(ctypes.c_ulong(a & ((1 << 64) - 1)))
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *cargs)
    e = ctypes.get_errno() if r < 0 else 0
    return r, e

out = {}
def rec(key, nr, *args, fd_result=False):
    r, e = call(nr, *args)
    if r == 0 and nr in (56, 435):       # a clone that went through: the child leaves at once
        os._exit(0)
    if r > 0 and nr in (56, 435):
        os.waitpid(r, 0x40000000)        # __WALL: the NEWTIME bit is an exit signal to clone()
    if fd_result and r >= 0:
        os.close(r)
    out[key] = e

SIGCHLD = 17
NS = {"NEWNS": 0x20000, "NEWUTS": 0x4000000, "NEWIPC": 0x8000000, "NEWPID": 0x20000000,
      "NEWNET": 0x40000000, "NEWCGROUP": 0x2000000, "NEWTIME": 0x80}
for n, f in NS.items():
    rec(f"clone_{n}", 56, f | SIGCHLD, 0, 0, 0, 0)
    rec(f"unshare_{n}", 272, f)
    ca = struct.pack("<11Q", f, 0, 0, 0, SIGCHLD, 0, 0, 0, 0, 0, 0)
    rec(f"clone3_{n}", 435, ca, 88)
rec("clone_plain", 56, SIGCHLD, 0, 0, 0, 0)                 # fork: the neighbour that works
rec("unshare_FILES", 272, 0x400)                           # CLONE_FILES: not a namespace

S_IFCHR, S_IFBLK, S_IFIFO, S_IFREG = 0o020000, 0o060000, 0o010000, 0o100000
rec("mknod_chr", 133, b"/tmp/kd-chr", S_IFCHR | 0o600, (1 << 8) | 3)
rec("mknod_blk", 133, b"/tmp/kd-blk", S_IFBLK | 0o600, (7 << 8) | 0)
rec("mknod_chr_hi", 133, b"/tmp/kd-chr2", (1 << 32) | S_IFCHR | 0o600, (1 << 8) | 3)
rec("mknodat_chr", 259, AT_FDCWD, b"/tmp/kd-chr3", S_IFCHR | 0o600, (1 << 8) | 3)
rec("mknodat_blk", 259, AT_FDCWD, b"/tmp/kd-blk3", S_IFBLK | 0o600, (7 << 8) | 0)
rec("mknod_fifo", 133, b"/tmp/kd-fifo", S_IFIFO | 0o600, 0)
rec("mknod_reg", 133, b"/tmp/kd-reg", S_IFREG | 0o600, 0)
rec("mknodat_fifo", 259, AT_FDCWD, b"/tmp/kd-fifo3", S_IFIFO | 0o600, 0)

m, s = os.openpty()
c = ctypes.create_string_buffer(b"x")
sub = ctypes.create_string_buffer(bytes([11]) + b"\0" * 7)
rec("ioctl_TIOCSTI", 16, s, 0x5412, ctypes.addressof(c))
rec("ioctl_TIOCSTI_hi", 16, s, (1 << 32) | 0x5412, ctypes.addressof(c))
rec("ioctl_TIOCLINUX", 16, s, 0x541C, ctypes.addressof(sub))
tio = ctypes.create_string_buffer(64)
rec("ioctl_TCGETS", 16, s, 0x5401, ctypes.addressof(tio))

params = ctypes.create_string_buffer(120)
rec("io_uring_setup", 425, 4, ctypes.addressof(params), fd_result=True)
rec("eventfd2", 290, 0, 0o2000000, fd_result=True)
rec("userfaultfd", 323, 0o2000000, fd_result=True)
rec("userfaultfd_user", 323, 0o2000000 | 1, fd_result=True)         # UFFD_USER_MODE_ONLY
try:
    os.close(os.open("/dev/userfaultfd", os.O_RDWR | os.O_CLOEXEC))
    out["dev_userfaultfd"] = 0
except OSError as e:
    out["dev_userfaultfd"] = e.errno
rec("memfd_create", 319, b"kd", 1, fd_result=True)
attr = ctypes.create_string_buffer(struct.pack("<IIQ", 1, 128, 0) + b"\0" * 112)   # software cpu-clock
rec("perf_event_open", 298, ctypes.addressof(attr), 0, (1 << 64) - 1, (1 << 64) - 1, 0, fd_result=True)
rec("kexec_load", 246, 0, 0, 0, 0)
rec("kexec_file_load", 320, (1 << 64) - 1, (1 << 64) - 1, 0, 0, 0)
rec("uname", 63, ctypes.addressof(ctypes.create_string_buffer(390)))
rec("swapon", 167, b"/tmp/kd-swap", 0)
rec("swapoff", 168, b"/tmp/kd-swap")
rec("iopl", 172, 3)
rec("ioperm", 173, 0x80, 1, 1)
fsbase = ctypes.c_ulong()
rec("arch_prctl_get_fs", 158, 0x1003, ctypes.addressof(fsbase))
tv = ctypes.create_string_buffer(16)
libc.gettimeofday(tv, None)
rec("settimeofday", 164, ctypes.addressof(tv), 0)
ts = ctypes.create_string_buffer(16)
rec("clock_gettime", 228, 0, ctypes.addressof(ts))
rec("clock_settime", 227, 0, ctypes.addressof(ts))
tx_read = ctypes.create_string_buffer(208)
rec("adjtimex_read", 159, ctypes.addressof(tx_read))
tx_set = ctypes.create_string_buffer(struct.pack("<I", 0x4000) + b"\0" * 204)   # ADJ_TICK
struct.pack_into("<q", tx_set, 96, 10000)    # tick = its usual value
rec("adjtimex_set", 159, ctypes.addressof(tx_set))
rec("clock_adjtime_set", 305, 0, ctypes.addressof(tx_set))
rec("umount2", 166, b"/tmp", 0)
rec("umount2_detach", 166, b"/proc", 2)
st = ctypes.create_string_buffer(120)
rec("statfs", 137, b"/tmp", ctypes.addressof(st))
print(json.dumps(out))
"""

S_IFCHR, S_IFBLK, S_IFIFO, S_IFREG = 0o020000, 0o060000, 0o010000, 0o100000
NS = {"NEWNS": 0x20000, "NEWUTS": 0x4000000, "NEWIPC": 0x8000000, "NEWPID": 0x20000000,
      "NEWNET": 0x40000000, "NEWCGROUP": 0x2000000, "NEWTIME": 0x80}

# key -> (syscall, the arguments the filter compares, strict's answer, default's answer)
# 0: the call works. Keys are the probe's.
CASES: dict[str, tuple] = {}
for _n, _f in NS.items():
    # clone(): NEWTIME's bit is inside CSIGNAL (the exit signal): clone() cannot ask for a time
    # namespace - strict refuses the bit anyway, Docker's filter lets the odd exit signal through
    CASES[f"clone_{_n}"] = ("clone", [_f | 17], EPERM, 0 if _n == "NEWTIME" else EPERM)
    CASES[f"unshare_{_n}"] = ("unshare", [_f], EPERM, EPERM)
    CASES[f"clone3_{_n}"] = ("clone3", [], ENOSYS, ENOSYS)
CASES.update({
    "clone_plain": ("clone", [17], 0, 0),                        # fork: the neighbour
    "unshare_FILES": ("unshare", [0x400], EPERM, EPERM),         # unshare is denied as a whole
    "mknod_chr": ("mknod", [0, S_IFCHR | 0o600], EPERM, EPERM),
    "mknod_blk": ("mknod", [0, S_IFBLK | 0o600], EPERM, EPERM),
    "mknod_chr_hi": ("mknod", [0, (1 << 32) | S_IFCHR | 0o600], EPERM, EPERM),
    "mknodat_chr": ("mknodat", [0, 0, S_IFCHR | 0o600], EPERM, EPERM),
    "mknodat_blk": ("mknodat", [0, 0, S_IFBLK | 0o600], EPERM, EPERM),
    "mknod_fifo": ("mknod", [0, S_IFIFO | 0o600], 0, 0),
    "mknod_reg": ("mknod", [0, S_IFREG | 0o600], 0, 0),
    "mknodat_fifo": ("mknodat", [0, 0, S_IFIFO | 0o600], 0, 0),
    "ioctl_TIOCSTI": ("ioctl", [0, 0x5412], EPERM, EPERM),
    "ioctl_TIOCSTI_hi": ("ioctl", [0, (1 << 32) | 0x5412], EPERM, EPERM),
    "ioctl_TIOCLINUX": ("ioctl", [0, 0x541C], EPERM, ENOTTY),   # default: the kernel (a pty is no VT)
    "ioctl_TCGETS": ("ioctl", [0, 0x5401], 0, 0),
    "io_uring_setup": ("io_uring_setup", [], EPERM, EPERM),
    "eventfd2": ("eventfd2", [], 0, 0),
    "userfaultfd": ("userfaultfd", [], EPERM, EPERM),
    "userfaultfd_user": ("userfaultfd", [], EPERM, EPERM),
    "dev_userfaultfd": (None, [], ENOENT, ENOENT),               # no such node in the sandbox's /dev
    "memfd_create": ("memfd_create", [], 0, 0),
    "perf_event_open": ("perf_event_open", [], EPERM, EPERM),
    "kexec_load": ("kexec_load", [], EPERM, EPERM),
    "kexec_file_load": ("kexec_file_load", [], EPERM, EPERM),
    "uname": ("uname", [], 0, 0),
    "swapon": ("swapon", [], EPERM, EPERM),
    "swapoff": ("swapoff", [], EPERM, EPERM),
    "iopl": ("iopl", [], EPERM, EPERM),
    "ioperm": ("ioperm", [], EPERM, EPERM),
    "arch_prctl_get_fs": ("arch_prctl", [0x1003], 0, 0),
    "settimeofday": ("settimeofday", [], EPERM, EPERM),
    "clock_gettime": ("clock_gettime", [], 0, 0),
    "clock_settime": ("clock_settime", [], EPERM, EPERM),
    "adjtimex_read": ("adjtimex", [], EPERM, 0),                 # strict: all of @clock
    "adjtimex_set": ("adjtimex", [], EPERM, EPERM),
    "clock_adjtime_set": ("clock_adjtime", [], EPERM, EPERM),
    "umount2": ("umount2", [], EPERM, EPERM),
    "umount2_detach": ("umount2", [], EPERM, EPERM),
    "statfs": ("statfs", [], 0, 0),
})


# Docker's filter allows these; under `default` the kernel refuses them (no CAP_MKNOD /
# CAP_SYS_TIME / CAP_SYS_ADMIN in the initial user namespace; a pty is not a VT)
DOCKER_LEAVES_TO_THE_KERNEL = ("mknod_chr", "mknod_blk", "mknod_chr_hi", "mknodat_chr", "mknodat_blk",
                               "ioctl_TIOCSTI", "ioctl_TIOCSTI_hi", "ioctl_TIOCLINUX", "adjtimex_set",
                               "clock_adjtime_set")


@pytest.fixture(scope="module")
def tools():
    """The ABI probe (static, built with gcc) and the Python probe, in a directory the
    unprivileged user can read; bound read-only into the sandbox at /probe."""
    d = tempfile.mkdtemp(prefix="pysbx-seccompkd-", dir="/tmp")
    os.chmod(d, 0o755)
    with open(os.path.join(d, "abi.c"), "w") as f:
        f.write(ABI_C)
    with open(os.path.join(d, "probe.py"), "w") as f:
        f.write(PROBE)
    subprocess.run(["gcc", "-static", "-O1", "-o", os.path.join(d, "abi"), os.path.join(d, "abi.c")],
                   check=True, capture_output=True)
    for name in ("abi", "probe.py"):
        os.chmod(os.path.join(d, name), 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def logdir(shared_tmp, runner):
    d = shared_tmp / "seccompkd-audit"
    d.mkdir()
    os.chown(d, runner.uid, runner.gid)
    return d


def events(log, types=None):
    evs = list(reader.read_events(str(log)))
    for e in evs:
        audit.validate(e)
    return [e for e in evs if types is None or e["type"] in types]


def test_the_abi_probe_does_what_it_says_on_the_host(tools):
    # unconfined: int 0x80 reaches the i386 getpid (IA32 emulation is on), x32 is not built
    # into this kernel (ENOSYS): inside the sandbox, any other answer than the kill is a hole
    for mode, want in (("int80", "survived"), ("x32", "survived -38")):
        p = subprocess.run([os.path.join(tools, "abi"), mode], capture_output=True, text=True)
        assert p.returncode == 0 and want in p.stdout, (mode, p)


@pytest.mark.parametrize("profile", ["strict", "default"])
@pytest.mark.parametrize("mode", ["int80", "x32"])
def test_foreign_abi_syscalls_kill_the_program(runner, tools, logdir, profile, mode):
    log = logdir / "audit.jsonl"
    r = runner("run", "--profile", profile, "--audit-log", str(log), "-v", f"{tools}:/probe:ro", "--",
               "/probe/abi", mode)
    assert r.returncode == 159, r                       # 128 + SIGSYS: the whole process killed
    assert "native 2" in r.stdout and "survived" not in r.stdout, r     # native getpid worked first
    ends = events(log, ("sandbox_exit",))
    assert ends and ends[-1]["status"]["signal"] == "SIGSYS", ends


@pytest.mark.parametrize("profile", ["strict", "default"])
def test_each_documented_denial_on_the_real_kernel(runner, tools, logdir, profile):
    from policies.compiler import compile_profile
    from policies.seccomp_verdict import decide
    plan = compile_profile(profile).plan.seccomp
    log = logdir / "audit.jsonl"
    r = runner("run", "--profile", profile, "--audit-log", str(log), "-v", f"{tools}:/probe:ro", "--",
               HOST_PYTHON, "/probe/probe.py")
    assert r.returncode == 0, r
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(out) == set(CASES), set(out) ^ set(CASES)
    col = 2 if profile == "strict" else 3
    got = {k: out[k] for k in CASES}
    want = {k: v[col] for k, v in CASES.items()}
    assert got == want, {k: (got[k], want[k]) for k in CASES if got[k] != want[k]}
    # who answered: strict's promise is its filter's - the plan denies every one with that errno;
    # default's is Docker's - where its plan allows the call, the refusal above was the kernel's
    filtered = []
    for key, (name, args, s_err, d_err) in CASES.items():
        if name is None:
            continue
        action, err = decide(plan, name, args)
        if profile == "strict" and s_err:
            assert (action, err) == ("errno", s_err), (key, action, err)
        if profile == "strict" and not s_err:
            assert action == "allow", (key, action)
        if action == "errno" and err == out[key] and err != ENOSYS:
            filtered.append(name)
        if profile == "default" and action == "allow":
            assert key in DOCKER_LEAVES_TO_THE_KERNEL or not d_err, (key, "allowed by default's plan")
    recorded = sorted(e["syscall"]["name"] for e in events(log, ("seccomp_denied", "escape_attempt")))
    if profile == "strict":
        # every filter denial recorded exactly once (ENOSYS answers are compatibility answers:
        # not notified, see docs/seccomp.md)
        assert recorded == sorted(filtered), (recorded, sorted(filtered))
        for e in events(log, ("seccomp_denied", "escape_attempt")):
            assert e["errno"] == EPERM and e["via"] == "user_notif", e
    else:
        assert recorded == []                  # default, as Docker, does not record denials


def test_a_kill_rule_kills_the_program_at_the_call(runner, tools, tmp_profile):
    # the documented kill action on one of these calls: the program dies with SIGSYS at the call
    prof = tmp_profile("""
version: 1
extends: strict
seccomp:
  deny: !extend
    - {names: [perf_event_open], action: kill}
""", name="kd-kill.yaml")
    code = ("import ctypes, sys; l = ctypes.CDLL(None, use_errno=True); print('before', flush=True); "
            "l.syscall(298, 0, 0, -1, -1, 0); print('after')")
    r = runner("run", "--profile", prof, "--", HOST_PYTHON, "-c", code)
    assert r.returncode == 159 and "before" in r.stdout and "after" not in r.stdout, r
    r = runner("run", "--profile", prof, "--", HOST_PYTHON, "-c", "import os; print(os.uname().sysname)")
    assert r.returncode == 0 and "Linux" in r.stdout, r
