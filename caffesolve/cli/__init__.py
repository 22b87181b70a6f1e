"""The `caffesolve` command line: parse options, call the library, report.

One click group; its subcommands live by subject in this package (data.py:
`data ...`; train.py: `train`, `test`, `time`; schedule.py: `lr-schedule`;
interop.py: `export`, `parse-log`, `plot`, `draw`). The library raises
CaffesolveError for bad input; the group turns it into one line on stderr and
exit status 1 (a traceback only with --debug). Usage errors exit 2 (click).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import click

from caffesolve import __version__
from caffesolve.backend import configure_blas_threads
from caffesolve.errors import CaffesolveError, one_line


class _CaffeGroup(click.Group):
    """A click group that reports CaffesolveError as a one-line user error."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except CaffesolveError as e:
            if (ctx.obj or {}).get("debug"):
                raise
            raise click.ClickException(one_line(str(e))) from None


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
    configure_blas_threads()  # backend.py's thread policy, for every command


set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a solver field, e.g. --set lr_policy=step "
    "--set stepsize=2000 (repeatable).",
)
log_option = click.option(
    "--log",
    "log_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also append the log to this file (for Caffe's parse_log.py).",
)


@contextlib.contextmanager
def logging_to(log_file: str | None) -> Iterator[None]:
    """Copy the glog lines to `log_file` (--log) while the block runs."""
    from caffesolve import tools
    from caffesolve.log import LOG

    stream = tools.open_log_file(log_file) if log_file else None
    try:
        yield
    finally:
        if stream is not None:
            LOG.drop(stream)


def main() -> None:
    """Console entry point (caffesolve.__main__.main wraps it)."""
    cli(prog_name="caffesolve")


# Importing each subject registers its commands on `cli`.
from caffesolve.cli import data, interop, schedule, train  # noqa: E402, F401

__all__ = ["cli", "main"]
