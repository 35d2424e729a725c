"""`pysandbox doctor`'s network rows: nftables, pyroute2, private networks, user-mode networking,
the sysctls that decide how far a private network reaches."""
from __future__ import annotations

import importlib.util
import shutil

from .nft import find_nft
from .usermode import tun_problem


def _read_sysctl(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def doctor_report(rootless: bool) -> list[tuple[str, bool, str]]:
    out: list[tuple[str, bool, str]] = []
    nftp = find_nft()
    out.append(("network: nftables (egress allow-lists, published ports)", nftp is not None,
                nftp or "nft not found: install nftables"))
    try:
        ok = importlib.util.find_spec("pyroute2") is not None
    except Exception:
        ok = False
    out.append(("network: pyroute2 (private networks)", ok, "installed" if ok else "pip install pyroute2"))
    out.append(("network: private networks (bridge + veth)", not rootless,
                "root: available" if not rootless else "need root; rootless sandboxes can use pasta"))
    tun = tun_problem()
    for tool, pkg in (("pasta", "passt"), ("slirp4netns", "slirp4netns")):
        p = shutil.which(tool)
        out.append((f"network: {tool} (user-mode networking)", p is not None and tun is None,
                    (p or f"not found: install the Debian package {pkg}") + (f"; {tun}" if p and tun else "")))
    fwd = _read_sysctl("/proc/sys/net/ipv4/ip_forward")
    out.append(("network: ip_forward (private networks reach beyond the host; -p from other hosts)",
                fwd == "1", f"net.ipv4.ip_forward = {fwd}" + ("" if fwd == "1" else
                                                                 " (sandboxes reach only the host and peers)")))
    brnf = _read_sysctl("/proc/sys/net/bridge/bridge-nf-call-iptables")
    if brnf is not None:
        out.append(("network: br_netfilter", True, f"bridge-nf-call-iptables = {brnf}"
                    + (" (a FORWARD drop policy of iptables also filters traffic between peers)"
                       if brnf == "1" else "")))
    return out
