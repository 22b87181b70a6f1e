"""`caffesolve train`, `test` and `time`: Caffe's tools/caffe.cpp commands
(caffesolve.tools does the work).
"""

from __future__ import annotations

import contextlib
import sys
import traceback
from collections.abc import Iterator

import click

from caffesolve.cli import cli, log_option, logging_to, set_option
from caffesolve.errors import CaffesolveError


@cli.command("time")
@click.argument("model", required=False, type=click.Path(dir_okay=False))
@click.option(
    "--model",
    "model_option",
    type=click.Path(dir_okay=False),
    default=None,
    help="The net prototxt (or give it as the argument).",
)
@click.option(
    "--phase",
    type=click.Choice(["TRAIN", "TEST"], case_sensitive=False),
    default="TRAIN",
    show_default=True,
    help="Build the net for this phase.",
)
@click.option(
    "--stage",
    "stages",
    multiple=True,
    help="A NetState stage for include/exclude rules (repeatable).",
)
@click.option("--level", type=int, default=0, show_default=True, help="NetState level.")
@click.option(
    "--iterations",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="Timed forward-backward passes.",
)
@click.option(
    "--weights",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Initialise from a .caffemodel (or .caffemodel.h5).",
)
def time_command(
    model: str | None,
    model_option: str | None,
    phase: str,
    stages: tuple[str, ...],
    level: int,
    iterations: int,
    weights: str | None,
) -> None:
    """Time every layer's forward and backward pass, like `caffe time`.

    \b
    caffesolve time configs/lenet_train_test.prototxt --iterations 20
    caffesolve time lenet.prototxt --phase TEST

    Input layers get random values in [0, 1); Data layers read their source.
    Results are Caffe's log lines on stderr.
    """
    from caffesolve import tools

    path = model or model_option
    if not path:
        raise click.UsageError("Need a model definition to time (MODEL or --model).")
    if model and model_option:
        raise click.UsageError("Give the model once, as MODEL or --model.")
    tools.time(path, phase.upper(), stages, level, iterations, weights)


@contextlib.contextmanager
def _one_rank_fails_all() -> Iterator[None]:
    """Under `mpirun -n N`: an error on one rank ends the whole job, with one
    line from that rank. Rank 0 reports an error every rank raised alike
    (parallel.WorldError) and all exit 1; any other error is printed by its
    rank, which then aborts the job (the others wait in a collective and
    would hang). One process: errors pass through unchanged."""
    try:
        yield
    except BaseException as e:
        from caffesolve import parallel

        world = parallel.running_world()
        if world is None or isinstance(e, click.exceptions.Exit):
            raise
        if isinstance(e, SystemExit) and not e.code:
            raise
        if isinstance(e, parallel.WorldError):
            if world.is_root:
                raise
            raise SystemExit(1) from None
        debug = (click.get_current_context().obj or {}).get("debug")
        if debug or not isinstance(e, CaffesolveError):
            traceback.print_exc()
        what = str(e) if isinstance(e, CaffesolveError) else f"{type(e).__name__}: {e}"
        click.echo(f"Error: {world.where()}: {what}", err=True)
        sys.stderr.flush()
        world.abort(1)
        raise


_SIGNAL_EFFECTS = click.Choice(["stop", "snapshot", "none"])


@cli.command("train")
@click.argument("solver", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--snapshot",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Resume from this .solverstate (or .solverstate.h5).",
)
@click.option(
    "--weights",
    default=None,
    metavar="A.caffemodel[,B.caffemodel]",
    help="Finetune: copy these weights by layer name (not with --snapshot).",
)
@set_option
@log_option
@click.option(
    "--iterations",
    type=click.IntRange(min=0),
    default=None,
    help="Train to this iteration (overrides max_iter).",
)
@click.option(
    "--sigint-effect",
    type=_SIGNAL_EFFECTS,
    default="stop",
    show_default=True,
    help="On SIGINT (Ctrl-C): stop (after a snapshot), snapshot, or none.",
)
@click.option(
    "--sighup-effect",
    type=_SIGNAL_EFFECTS,
    default="snapshot",
    show_default=True,
    help="On SIGHUP: snapshot and go on, stop (after a snapshot), or none.",
)
def train(
    solver: str,
    snapshot: str | None,
    weights: str | None,
    overrides: tuple[str, ...],
    log_file: str | None,
    iterations: int | None,
    sigint_effect: str,
    sighup_effect: str,
) -> None:
    """Train or finetune a model, as `caffe train --solver SOLVER`.

    \b
    caffesolve train configs/lenet_solver.prototxt
    caffesolve train SOLVER --snapshot lenet_iter_5000.solverstate
    caffesolve train SOLVER --weights pretrained.caffemodel --log train.log
    mpirun -n 4 caffesolve train SOLVER      # data-parallel, 4 ranks

    Under mpirun (pip install 'caffesolve[mpi]') the ranks train one model:
    each reads every N-th record, gradients are averaged, rank 0 logs,
    tests and snapshots (the effective batch is N x batch_size).
    """
    from caffesolve import tools

    with logging_to(log_file), _one_rank_fails_all():
        tools.train(
            solver,
            snapshot=snapshot,
            weights=weights,
            overrides=overrides,
            iterations=iterations,
            sigint_effect=sigint_effect,
            sighup_effect=sighup_effect,
        )


@cli.command("test")
@click.option(
    "--model",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="The net prototxt (its TEST phase is run).",
)
@click.option(
    "--weights",
    required=True,
    metavar="FILE.caffemodel",
    help="Trained weights (.caffemodel or .caffemodel.h5).",
)
@click.option(
    "--iterations",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="Number of batches to score.",
)
@log_option
def test(model: str, weights: str, iterations: int, log_file: str | None) -> None:
    """Score a model, as `caffe test`: each batch's outputs, then the means.

    \b
    caffesolve test --model lenet_train_test.prototxt \\
        --weights lenet_iter_10000.caffemodel --iterations 100
    """
    from caffesolve import tools

    with logging_to(log_file):
        tools.score(model, weights, iterations)
