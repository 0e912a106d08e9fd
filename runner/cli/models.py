"""`gridrun models`: what model.arch can name, from gridrun's registry and each installed library."""

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from runner.cli.app import app, console, note
from runner.errors import UserError
from runner.prepare import default_cache
from runner.train.probe import Catalog, Listing
from schemas.base import excerpt
from schemas.registry import ARCHS, FRAMEWORKS, ZOOS, Registered, plain

MAX_FILTER = 100
_FRAMEWORK = Registered(FRAMEWORKS, "framework")
SHOWN_TAGS = 3  # timm's pretrained tags shown per model


def _filter(text: str | None) -> str:
    if text is None:
        return ""
    if not text.strip() or len(text) > MAX_FILTER or not text.isprintable():
        raise UserError(
            f"--filter {excerpt(text)} is not a piece of a model name. Fix: give 1 to {MAX_FILTER} printable "
            "characters, e.g. --filter resnet"
        )
    return text.strip().lower()


def _twins(framework: str | None, needle: str) -> Table | None:
    frameworks = [framework] if framework else list(FRAMEWORKS)
    table = Table(title="gridrun's architectures: the same network in every framework (model.arch: <name>)")
    for col in ("model.arch", "frameworks", "ImageNet weights", "classifier_width", "description"):
        table.add_column(col, overflow="fold")
    for arch in ARCHS.values():
        if needle in arch.name.lower():
            table.add_row(
                arch.name,
                ", ".join(frameworks),
                ", ".join(f for f in frameworks if f in arch.imagenet) or "none",
                f"yes (default {arch.default_width})" if arch.default_width else "no",
                arch.description,
            )
    return table if table.rows else None


def _weights(listing: Listing, name: str) -> str:
    if listing.tagged:
        tags = [t.split(".", 1)[1] for t in listing.tagged if t.split(".", 1)[0] == name]
        more = f", +{len(tags) - SHOWN_TAGS}" if len(tags) > SHOWN_TAGS else ""
        return f"yes: {', '.join(tags[:SHOWN_TAGS])}{more}" if tags else "no"
    return "yes" if name in listing.imagenet else "no"


def _zoo(listing: Listing, needle: str) -> Table | None:
    zoo = listing.zoo
    weights = "pretrained tags (timm.<name>.<tag>)" if listing.tagged else "ImageNet weights"
    table = Table(
        title=f"{zoo.description}: {len(listing.names)} models, framework {zoo.framework} "
        f"(model.arch: {zoo.prefix}.<name>)"
    )
    table.add_column("model.arch", overflow="fold")
    table.add_column(weights, overflow="fold")
    for name in listing.names:
        arch = f"{zoo.prefix}.{name}"
        if needle in arch.lower():
            table.add_row(arch, _weights(listing, name))
    return table if table.rows else None


@app.command()
def models(
    framework: Annotated[
        str | None, typer.Option("--framework", help=f"Only what trains in this framework: {plain(list(FRAMEWORKS))}.")
    ] = None,
    contains: Annotated[
        str | None, typer.Option("--filter", help="Only names that contain this text (case aside), e.g. resnet.")
    ] = None,
) -> None:
    """List what model.arch can name: gridrun's architectures, each installed library's models, your own."""
    if framework is not None:
        try:
            _FRAMEWORK.check(framework)
        except ValueError as e:
            raise UserError(f"--framework: {e}. Fix: pick one of those, or leave it out for all") from None
    needle = _filter(contains)
    catalog = Catalog(default_cache(), say=note)
    zoos = [z for z in ZOOS.values() if framework in (None, z.framework)]
    catalog.ask(zoos)
    tables = [_twins(framework, needle)]
    tables += [_zoo(listing, needle) for z in zoos if (listing := catalog.listing(z)) is not None]
    shown = [t for t in tables if t is not None]
    for table in shown:
        # The title on a line of its own: a narrow table would wrap it.
        console.print(f"[bold]{escape(str(table.title))}[/]", highlight=False)
        table.title = None
        console.print(table)
    if needle and not shown:
        console.print(f"no model name here contains {excerpt(contains)}", highlight=False)
    console.print(
        "Your own model: model.arch: <module>:<function>, from the suite's code: folder; the function takes "
        "(num_classes, weights_path_or_None) and returns a torch.nn.Module (framework torch) or a keras.Model "
        "(framework tensorflow). See the README's 'Your own models and datasets'.",
        highlight=False,
    )


def register(_app: typer.Typer) -> None:
    """Commands are registered on import (they decorate the shared app)."""
