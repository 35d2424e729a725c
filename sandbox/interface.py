"""The container interface (systemd's CONTAINER_INTERFACE, podman's): what a program reads to
know it runs in a container - `/run/.containerenv`, `/run/host/container-manager` and the
`container=` environment variable. Written by sandbox/rootfs.py (host roots) and
sandbox/store/mountpoints.py (image and directory roots); one text for both."""
from __future__ import annotations

ENGINE = "pysandbox"
VERSION = "0.1.0"        # = pyproject.toml's (tests/system/test_container_interface.py checks)


def containerenv(image: str = "", image_id: str = "", rootless: bool = False) -> str:
    """/run/.containerenv: podman's key=value lines. Like podman's for a container that is not
    --privileged, no name and no id: a root built ahead (the launch server's spares) does not know
    its run, and the file must read the same whichever way the root was built. The image is the
    name the caller chose; nothing of the host's."""
    q = lambda v: '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'
    return (f"engine={q(ENGINE + '-' + VERSION)}\nimage={q(image)}\nimageid={q(image_id)}\n"
            f"rootless={1 if rootless else 0}\n")
