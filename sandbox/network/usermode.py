"""User-mode networking (works rootless): pasta or slirp4netns gives the sandbox's own network
namespace outbound traffic and publishes its ports. Both keep the sandbox off the host's loopback
services: `--no-map-gw` / `-T none -U none` (pasta), `--disable-host-loopback` / `--disable-dns`
(slirp4netns). The helper dies with the supervisor (PDEATHSIG through setpriv, kept across exec):
no stray pasta/slirp4netns after a supervisor crash."""
from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import tempfile
import time

from .common import STEP_TIMEOUT, NetworkError


def tun_problem() -> str | None:
    """Why user-mode networking cannot open /dev/net/tun for this user, or None."""
    path = "/dev/net/tun"
    try:
        st = os.stat(path)
    except OSError as e:
        return f"{path}: {e.strerror} (user-mode networking needs the tun device)"
    if not os.access(path, os.R_OK | os.W_OK):
        return (f"{path} (mode {st.st_mode & 0o777:04o}) is not usable by uid {os.geteuid()}; user-mode "
                "networking needs it (Debian's default is 0666)")
    return None


def start(mode: str, tool: str, ports: list[dict], pid: int, nsfd: int | None = None,
          userns_fd: int | None = None) -> subprocess.Popen:
    """Start `mode` (pasta or slirp4netns, the binary `tool`) for the sandbox whose PID 1 is `pid`,
    publish `ports`, and return the running helper once the namespace is configured. On failure
    the helper is stopped and NetworkError says why (its last line of stderr). nsfd/userns_fd:
    the sandbox's namespaces (slirp4netns: its IPv6 address and route are set through them)."""
    tmp = tempfile.mkdtemp(prefix=f"pysandbox-{mode}-")     # only needed while it starts
    try:
        with open(os.path.join(tmp, "stderr"), "w+b") as errf:
            if mode == "pasta":
                pidfile = os.path.join(tmp, "pid")
                helper = _spawn(_pasta_argv(tool, ports, pid, pidfile), errf)
                try:
                    _pasta_ready(helper, pidfile, errf)
                except BaseException:
                    stop(helper)
                    raise
                return helper
            api = os.path.join(tmp, "api.sock")
            v6 = _kernel_has_ipv6()
            r, w = os.pipe()
            try:
                try:
                    helper = _spawn(_slirp4netns_argv(tool, pid, w, api, v6), errf, pass_fds=[w])
                finally:
                    os.close(w)
                try:
                    _slirp4netns_ready(helper, r, errf)
                    if v6:
                        _slirp4netns_ipv6(pid, nsfd, userns_fd)
                    _slirp4netns_publish(api, ports)
                except BaseException:
                    stop(helper)
                    raise
                return helper
            finally:
                os.close(r)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def stop(p: subprocess.Popen) -> None:
    try:
        p.terminate()
        try:
            p.wait(timeout=2)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=2)
    except (OSError, subprocess.TimeoutExpired):
        pass


def _spawn(argv: list[str], errf, pass_fds=()) -> subprocess.Popen:
    sp = shutil.which("setpriv")
    if sp:
        argv = [sp, "--pdeathsig", "KILL", "--"] + argv
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errf,
                            pass_fds=tuple(pass_fds), start_new_session=True)


def _errtext(errf) -> str:
    try:
        errf.seek(0)
        lines = errf.read().decode(errors="replace").strip().splitlines()
    except OSError:
        lines = []
    return lines[-1] if lines else "exited"


# --------------------------------------------------------------------------- pasta

def _pasta_argv(tool: str, ports: list[dict], pid: int, pidfile: str) -> list[str]:
    argv = [tool, "--config-net", "-f", "-q", "--no-map-gw"]
    if os.geteuid() == 0:
        # as root pasta would switch to nobody before opening /proc/PID/ns/*, which the
        # sandbox (another uid, non-dumpable) does not allow; it still drops its capabilities
        argv += ["--runas", "0:0"]
    tcp = ",".join(f"{'' if p['host_ip'] == '0.0.0.0' else p['host_ip'] + '/'}{p['host_port']}:{p['port']}"
                   for p in ports if p["proto"] == "tcp") or "none"
    udp = ",".join(f"{'' if p['host_ip'] == '0.0.0.0' else p['host_ip'] + '/'}{p['host_port']}:{p['port']}"
                   for p in ports if p["proto"] == "udp") or "none"
    return argv + ["-t", tcp, "-u", udp, "-T", "none", "-U", "none", "-P", pidfile,
                   "--netns", f"/proc/{pid}/ns/net", "--userns", f"/proc/{pid}/ns/user"]


def _pasta_ready(helper: subprocess.Popen, pidfile: str, errf) -> None:
    deadline = time.monotonic() + STEP_TIMEOUT
    while not os.path.exists(pidfile):
        if helper.poll() is not None:
            raise NetworkError(f"network pasta: {_errtext(errf)}")
        if time.monotonic() > deadline:
            raise NetworkError("network pasta: not ready after 10 s")
        time.sleep(0.005)


# --------------------------------------------------------------------------- slirp4netns

def _kernel_has_ipv6() -> bool:
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()
        return True
    except OSError:
        return False


def _slirp4netns_argv(tool: str, pid: int, ready_fd: int, api: str, v6: bool = True) -> list[str]:
    # --disable-dns: slirp's DNS address (10.0.2.3, fd00::3) relays to the host's resolver, which may
    # listen on the host's loopback (127.0.0.1, 127.0.0.53) - around --disable-host-loopback (which
    # covers fd00::2 -> ::1 too). Sandboxes use the host's resolv.conf, never 10.0.2.3.
    # --enable-ipv6: slirp's own IPv6 NAT (fd00::/64, gateway fd00::2) to the host's IPv6 stack.
    return [tool, "--configure", "--mtu=65520", "--disable-host-loopback", "--disable-dns",
            *(["--enable-ipv6"] if v6 else []), f"--ready-fd={ready_fd}", f"--api-socket={api}", "--userns-path", f"/proc/{pid}/ns/user",
            "--netns-type=path", f"/proc/{pid}/ns/net", "tap0"]


def _slirp4netns_ready(helper: subprocess.Popen, r: int, errf) -> None:
    ready, _, _ = select.select([r], [], [], STEP_TIMEOUT)
    if bool(ready) and os.read(r, 1) == b"1":
        return
    if helper.poll() is None:
        raise NetworkError("network slirp4netns: not ready after 10 s")
    raise NetworkError(f"network slirp4netns: {_errtext(errf)[:200]}")


SLIRP_ADDR6, SLIRP_GW6 = "fd00::100", "fd00::2"     # slirp4netns's default IPv6 network (fd00::/64)


def _slirp4netns_ipv6(pid: int, nsfd: int | None, userns_fd: int | None) -> None:
    """The sandbox's IPv6 address and default route on tap0, set now: slirp4netns --configure
    leaves IPv6 to SLAAC (its router advertisements), which comes a second or more after the
    program has started (duplicate address detection, the solicitation delay): its first IPv6
    connect() would fail with ENETUNREACH. fd00::100 mirrors 10.0.2.100; `nodad`: nothing else
    is on that link."""
    from .nft import nsenter_prefix
    ip = shutil.which("ip") or "/usr/sbin/ip"
    pre = nsenter_prefix(None if nsfd is not None else pid, nsfd, userns_fd)
    fds = tuple(f for f in (nsfd, userns_fd) if f is not None)
    for args in (["-6", "addr", "add", f"{SLIRP_ADDR6}/64", "dev", "tap0", "nodad"],
                 ["-6", "route", "replace", "default", "via", SLIRP_GW6, "dev", "tap0"]):
        try:
            p = subprocess.run(pre + [ip] + args, capture_output=True, text=True, timeout=STEP_TIMEOUT,
                               pass_fds=fds)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise NetworkError(f"network slirp4netns: IPv6: {e}") from None
        if p.returncode != 0:
            last = (p.stderr.strip().splitlines() or ["failed"])[-1]
            raise NetworkError(f"network slirp4netns: IPv6: ip {' '.join(args[1:3])}: {last[:200]}")


def _slirp4netns_publish(api: str, ports: list[dict]) -> None:
    for p in ports:
        req = {"execute": "add_hostfwd", "arguments": {"proto": p["proto"], "host_addr": p["host_ip"],
                                                       "host_port": p["host_port"], "guest_port": p["port"]}}
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(STEP_TIMEOUT)
            s.connect(api)
            s.sendall(json.dumps(req).encode())
            s.shutdown(socket.SHUT_WR)
            resp = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                resp += chunk
        try:
            ans = json.loads(resp or b"{}")
        except ValueError:
            ans = {"error": {"desc": resp.decode(errors="replace")}}
        if "error" in ans:
            raise NetworkError(f"network slirp4netns: publish {p['host_port']}: {ans['error'].get('desc')}")
