"""Entry point of the `starserve` command.

Sub-commands live one module each in this package and are listed in `SUBCOMMANDS`, a plain
registry: a module exposing a `typer.Typer` named `app` becomes a command group
(`starserve workload ...`), one exposing a function `command` becomes a single command
(`starserve simulate ...`). Modules must keep heavy imports (torch, ray) inside their
functions so that `--help` stays instant.
"""

from __future__ import annotations

import importlib
import sys

import typer

from starserve.errors import StarserveError

# name -> module under starserve.cli
SUBCOMMANDS: dict[str, str] = {
    "workload": "starserve.cli.workload",
    "simulate": "starserve.cli.simulate",
    "serve": "starserve.cli.serve",
    "bench": "starserve.cli.bench",
    "model": "starserve.cli.model",
    "predictor": "starserve.cli.predictor",
    "profile": "starserve.cli.profile",
}

app = typer.Typer(
    name="starserve",
    help="PD-disaggregated LLM serving with predictive decode rescheduling (STAR).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        if hasattr(module, "app"):
            app.add_typer(module.app, name=name)
        else:
            app.command(name=name)(module.command)


_register()


def main() -> None:
    """Run the CLI; user errors print one line and exit 2."""
    try:
        app()
    except StarserveError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
