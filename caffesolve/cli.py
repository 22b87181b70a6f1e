"""The `caffesolve` command line: parse options, call the library, report.

Each subcommand lives here as a small function. The library raises
CaffesolveError for bad input; `main` turns it into one line on stderr and exit
status 1 (a traceback only with --debug). Usage errors exit 2 (click).
"""

from __future__ import annotations

import click

from caffesolve import __version__
from caffesolve.errors import CaffesolveError


class _CaffeGroup(click.Group):
    """A click group that reports CaffesolveError as a one-line user error."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except CaffesolveError as e:
            if (ctx.obj or {}).get("debug"):
                raise
            raise click.ClickException(str(e)) from None


@click.group(cls=_CaffeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="caffesolve")
@click.option("--debug", is_flag=True, help="Show a traceback on errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Train Caffe nets from Caffe's own prototxt files, in NumPy.

    \b
    caffesolve train configs/lenet_solver.prototxt
    caffesolve lr-schedule configs/lenet_solver.prototxt
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def main() -> None:
    """Console entry point."""
    cli(prog_name="caffesolve")
