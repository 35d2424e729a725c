"""Code shared by the probes the Landlock tests run inside a sandbox (python3 -I -c SOURCE): each
step prints "<what> <ok|ERRNO>"; `write(p)` creates or truncates p and writes one byte."""

STEP = r"""
import errno
def t(what, f):
    try:
        f()
        print(what, "ok")
    except OSError as e:
        print(what, errno.errorcode.get(e.errno, e.errno))
def write(p):
    with open(p, "w") as f:
        f.write("x")
"""


# The upstream side of an egress scenario, run first in the scenario's own net + mount namespaces
# (`unshare -n -m`; the scenario has imported os and subprocess): a veth pair whose v0 end,
# 192.0.2.1, plays the internet's servers; forwarding on, for pasta/slirp4netns and the bridge.
# `sh` runs a command and fails the scenario if it fails.
UPSTREAM = r"""
def sh(*a, env=None):
    subprocess.run(a, check=True, capture_output=True, env=env)
sh("mount", "--make-rprivate", "/")
sh("ip", "link", "set", "lo", "up")
sh("ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1")
sh("ip", "link", "set", "v0", "up"); sh("ip", "link", "set", "v1", "up")
sh("ip", "addr", "add", "192.0.2.1/24", "dev", "v0")
with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
    f.write("1")
"""
