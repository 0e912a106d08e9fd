"""`gridrun images` (list with digests), `gridrun images build` and `gridrun images prune`."""

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from runner.errors import UserError
from runner.execute import images

images_app = typer.Typer(
    help="The framework Docker images: list them (default), build them, or remove old ones.",
    invoke_without_command=True,
    no_args_is_help=False,
)


def _gb(size: int) -> str:
    return f"{size / 1e9:.2f} GB"


@images_app.callback()
def list_cmd(ctx: typer.Context) -> None:
    """List gridrun's images on this machine with their digests; `current` ones match this source tree."""
    if ctx.invoked_subcommand is not None:
        return
    from runner.cli.app import console

    rows = images.list_images()
    wanted = {f: images.tag(f) for f in images.FRAMEWORKS}
    table = Table("image", "framework", "version", "digest", "size", "created", "state")
    for r in rows:
        table.add_row(r.tag, r.framework, r.version, r.digest, _gb(r.size_bytes), r.created, r.state)
    console.print(table)
    missing = [t for t in wanted.values() if t not in {r.tag for r in rows}]
    if missing:
        console.print(f"not built: {', '.join(missing)} (run `gridrun images build`)")


@images_app.command("build")
def build_cmd(
    framework: Annotated[
        list[str] | None, typer.Option("--framework", "-f", help="torch or tensorflow; repeat for both (default).")
    ] = None,
    base_image: Annotated[
        str | None,
        typer.Option(
            "--base-image",
            envvar="GRIDRUN_BASE_IMAGE",
            help="BASE_IMAGE (default: the Dockerfile's, or gridrun-python:bookworm when only that is here).",
        ),
    ] = None,
    pip_cert: Annotated[
        Path | None,
        typer.Option("--pip-cert", help="CA bundle pip trusts during the build (default: $PIP_CERT or pip's cert)."),
    ] = None,
    no_pip_cert: Annotated[bool, typer.Option("--no-pip-cert", help="Give pip no CA bundle.")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Rebuild every layer.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the summary, not the build output.")] = False,
) -> None:
    """Build the framework images (torch and tensorflow), reusing cached layers."""
    from runner.cli.app import console

    chosen = framework or list(images.FRAMEWORKS)
    for f in chosen:
        if f not in images.FRAMEWORKS:
            raise UserError(f"--framework {f!r} is not one of {', '.join(images.FRAMEWORKS)}. Fix: pick one of those.")
    ca = None if no_pip_cert else (pip_cert or images.pip_cert())
    client = images.connect(timeout=3600)

    def say(line: str) -> None:
        if not quiet:
            console.print(line, markup=False, highlight=False)

    built = [images.build(f, base_image=base_image, ca=ca, no_cache=no_cache, say=say, client=client) for f in chosen]
    table = Table("image", "id", "size", "build time", "base")
    for b in built:
        table.add_row(b.tag, b.id, _gb(b.size_bytes), f"{b.seconds:.0f} s", b.base_image)
    console.print(table)


@images_app.command("prune")
def prune_cmd() -> None:
    """Remove gridrun images built from another Dockerfile or version (they are several GB each)."""
    from runner.cli.app import console

    removed = images.prune(images.connect(), say=lambda line: console.print(line, markup=False, highlight=False))
    for r in removed:
        console.print(f"removed {r.tag} ({_gb(r.size_bytes)})", highlight=False)
    if not removed:
        console.print("no old gridrun images", highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(images_app, name="images")
