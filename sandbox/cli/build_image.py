"""CLI: `pysandbox build -t NAME:TAG [-f Dockerfile] [--build-arg K=V] [--no-cache] [--network NET]
[--progress auto|plain|quiet] CONTEXT` (sandbox/build/). Bad input (the Dockerfile, .dockerignore,
an argument): one line, `file:line:col: ...` where known, exit 2, nothing built. A RUN that fails:
exit 1. The store or a launch that cannot be used: 125. (Not named build.py: importing
sandbox.cli.build would replace the package's function build().)"""
from __future__ import annotations

import sys

import click

from .image import _tls_options     # FROM HOST/PATH pulls as `image pull` does


@click.command("build")
@click.option("-t", "--tag", required=True, metavar="NAME[:TAG]", help="Name of the image built.")
@click.option("-f", "--file", "dockerfile", metavar="PATH", help="The Dockerfile (default: CONTEXT/Dockerfile).")
@click.option("--build-arg", "build_args", multiple=True, metavar="K=V", help="Value of an ARG (repeatable).")
@click.option("--no-cache", is_flag=True, help="Run every step again (the cache is refreshed).")
@click.option("--network", metavar="NET", help="Network of the RUN steps (default: none).")
@click.option("--progress", type=click.Choice(["auto", "plain", "quiet"]), default="auto", show_default=True,
              help="Step display: auto (a spinner on a terminal), plain lines, or quiet (only the image id).")
@click.option("-q", "--quiet", is_flag=True, help="Same as --progress quiet.")
@_tls_options
@click.argument("context", type=click.Path(file_okay=False))
def build(tag, dockerfile, build_args, no_cache, network, progress, quiet, tls_verify, ca_file, authfile, context):
    """Build an image from a Dockerfile, each RUN in a sandbox (profile `build`)."""
    from policies.dockerfile import DockerfileError
    from ..builder.executor import Builder, BuildError, Options
    from ..store.images import ImageError
    if quiet:
        progress = "quiet"
    args = {}
    for a in build_args:
        k, eq, v = a.partition("=")
        if not k:
            raise click.BadParameter(f"{a!r}: expected K=V", param_hint="'--build-arg'")
        if not eq:                      # Docker: --build-arg K takes K from the environment
            import os
            if k not in os.environ:
                continue
            v = os.environ[k]
        args[k] = v
    try:
        b = Builder(Options(tag=tag, context=context, dockerfile=dockerfile, build_args=args, no_cache=no_cache,
                            network=network, progress=progress,
                            pull=dict(tls_verify=tls_verify, ca_file=ca_file, authfile=authfile)))
        name, rec = b.build()
    except DockerfileError as e:
        _fail(str(e), 2)
    except BuildError as e:
        _fail(str(e), e.code)
    except ImageError as e:
        _fail(str(e), 125 if "cannot create image store" in str(e) else 2)
    except PermissionError as e:
        _fail(f"permission denied: {e.filename or e}", 125)
    if progress != "quiet":
        sys.stderr.write(f"Successfully built {rec['id'][7:19]} {name} "
                         f"({b.hits} cached, {b.misses} run)\n")
    click.echo(rec["id"])
    return 0


def _fail(msg: str, code: int):
    sys.stderr.write(f"pysandbox: build: {' '.join(msg.split())}\n")
    sys.exit(code)


COMMANDS = [build]
