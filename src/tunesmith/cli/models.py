"""`tunesmith models list | info | add | rm`: the named model store."""

from __future__ import annotations


import typer

from tunesmith.cli.common import console, print_json, print_table

models_app = typer.Typer(help="The model store: named base models on this machine.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")


def _fmt_params(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


@models_app.command("list")
def list_cmd(json_out: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """List the models in the store (the embedded default is always there)."""
    from rich.table import Table

    from tunesmith.models.store import ModelStore

    entries = ModelStore().list()
    if json_out:
        return print_json([e.to_dict() for e in entries])
    table = Table("name", "kind", "architecture", "parameters", "path")
    for e in entries:
        table.add_row(e.name + (" (built in)" if e.builtin else ""), e.kind, e.architecture or "-",
                      _fmt_params(e.parameters), e.path)
    print_table(table)


@models_app.command("info")
def info_cmd(name: str, json_out: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Show a model's fields: path, architecture, parameters, context length, chat template, sha256."""
    from tunesmith.models.store import ModelStore

    entry = ModelStore().info(name)
    if json_out:
        return print_json(entry.to_dict())
    fields = entry.to_dict()
    fields["parameters"] = f"{entry.parameters:,} ({_fmt_params(entry.parameters)})" if entry.parameters else "?"
    for key, value in fields.items():
        console.print(f"{key:>15}: {value}")


@models_app.command("add")
def add_cmd(
    path: str = typer.Argument(..., help="a Hugging Face model folder (config.json + safetensors), a .gguf file, "
                                          "or the name of an installed model package (gemma3-270m)"),
    name: str = typer.Option(None, "--name", help="store name (default: the folder or file name, or the package's name)"),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="accept .bin/.pt pickle weights (they can run code)"),
) -> None:
    """Check that a local model loads, then add it to the store."""
    from tunesmith.models.store import ModelStore

    entry = ModelStore().add(path, name, allow_pickle=allow_pickle)
    console.print(f"added '{entry.name}': {entry.architecture}, {_fmt_params(entry.parameters)} parameters, "
                  f"context {entry.context_length}, chat template: {'yes' if entry.chat_template else 'no'}")
    if entry.terms:
        console.print(f"its weights come under the {entry.terms}; tunesmith does not redistribute them")


@models_app.command("rm")
def rm_cmd(name: str) -> None:
    """Remove a model from the store (its files on disk are left alone)."""
    from tunesmith.models.store import ModelStore

    entry = ModelStore().remove(name)
    console.print(f"removed '{entry.name}' (files at {entry.path} left in place)")
