"""`tunesmith config show | keys`: the resolved config and every key's meaning."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from tunesmith.cli.common import console
from tunesmith.config import keys_help

config_app = typer.Typer(help="Inspect configs: resolved values, their sources, every key.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")


SET_HELP = "override a key, e.g. --set train.lr=1e-4 (repeatable); `tunesmith config keys` lists them"


@config_app.command("show", epilog="Keys:\n\n" + keys_help().replace("\n", "\n\n"))
def show_cmd(
    file: Optional[Path] = typer.Argument(None, help="a YAML config file (omit for the defaults)"),
    set_: List[str] = typer.Option([], "--set", help=SET_HELP),
) -> None:
    """Print the resolved config; each non-default value says where it came from."""
    import yaml

    from tunesmith.config import resolve_config, to_dict

    resolved = resolve_config(file, set_)
    for section, value in to_dict(resolved.config).items():
        if not isinstance(value, dict):
            src = resolved.sources.get(section)
            typer.echo(f"{section}: {yaml.safe_dump(value).strip().removesuffix('...').strip()}"
                       + (f"    # {src}" if src else ""))
            continue
        typer.echo(f"{section}:")
        for key, v in value.items():
            src = resolved.sources.get(f"{section}.{key}")
            text = yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()
            typer.echo(f"  {key}: {text}" + (f"    # {src}" if src else ""))


@config_app.command("keys")
def keys_cmd() -> None:
    """List every config key with its type and meaning."""
    from tunesmith.config import describe_keys

    for key, tp, help_ in describe_keys():
        console.print(f"[bold]{key}[/] ({tp}): {help_}")
