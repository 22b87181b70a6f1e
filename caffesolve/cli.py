"""The `caffesolve` command line: parse options, call the library, report.

Each subcommand lives here as a small function. The library raises
CaffesolveError for bad input; the group turns it into one line on stderr and
exit status 1 (a traceback only with --debug). Usage errors exit 2 (click).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import traceback
from collections.abc import Iterator
from typing import Any

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


_set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a solver field, e.g. --set lr_policy=step "
    "--set stepsize=2000 (repeatable).",
)
_log_option = click.option(
    "--log",
    "log_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also append the log to this file (for Caffe's parse_log.py).",
)


@contextlib.contextmanager
def _logging_to(log_file: str | None) -> Iterator[None]:
    """Copy the glog lines to `log_file` (--log) while the block runs."""
    from caffesolve import tools
    from caffesolve.log import LOG

    stream = tools.open_log_file(log_file) if log_file else None
    try:
        yield
    finally:
        if stream is not None:
            LOG.drop(stream)


@cli.group("data")
def data_group() -> None:
    """Caffe's data tools: get data sets and write Caffe's databases.

    \b
    caffesolve data mnist                     # -> data/mnist/mnist_{train,test}_lmdb
    caffesolve data mnist --from ~/Downloads  # the four IDX files, .gz or not
    caffesolve data fashion-mnist             # Debian's package if installed
    caffesolve data cifar10                   # -> data/cifar10/ (LMDBs + mean)
    caffesolve data images list.txt photos/ data/photos_lmdb   # convert_imageset
    caffesolve data mean data/photos_lmdb data/photos_mean.binaryproto
    caffesolve data sine                      # -> data/sine/{train,test}.h5
    """


def _data_options(
    default_out: str,
    out_help: str = "Folder for the IDX files and the two LMDBs.",
    from_help: str = "Use the four IDX files in this folder (.gz or not) "
    "instead of downloading.",
    from_file_okay: bool = False,
    checksum_help: str = "Do not check the files against the published MD5s "
    "(files in the MNIST format that you made yourself).",
) -> Any:
    def wrap(f: Any) -> Any:
        for opt in reversed(
            [
                click.option(
                    "--out",
                    default=default_out,
                    show_default=True,
                    type=click.Path(file_okay=False),
                    help=out_help,
                ),
                click.option(
                    "--from",
                    "from_dir",
                    type=click.Path(exists=True, file_okay=from_file_okay),
                    help=from_help,
                ),
                click.option(
                    "--force",
                    is_flag=True,
                    help="Replace databases built from other files (or not by "
                    "caffesolve); ones from the same files are kept without it.",
                ),
                click.option(
                    "--mirror",
                    "mirrors",
                    multiple=True,
                    metavar="URL|DIR",
                    help="Download from this base URL, or take the files from "
                    "this folder (repeatable; tried in order instead of the "
                    "built-in mirrors).",
                ),
                click.option("--skip-checksum", is_flag=True, help=checksum_help),
            ]
        ):
            f = opt(f)
        return f

    return wrap


def _run_data(
    name: str,
    out: str,
    from_dir: str | None,
    force: bool,
    mirrors: tuple[str, ...],
    skip_checksum: bool,
) -> None:
    """Get data set `name` and write its files; print their paths."""
    from caffesolve.data.cifar10 import prepare_cifar10
    from caffesolve.data.datasets import DATASETS, default_reporter, prepare_dataset

    prepare = (
        prepare_cifar10
        if name == "cifar10"
        else functools.partial(prepare_dataset, DATASETS[name])
    )
    paths = prepare(
        out,
        from_dir,
        force=force,
        mirrors=list(mirrors) or None,
        verify=not skip_checksum,
        reporter=default_reporter(),
    )
    for path in paths.values():
        click.echo(str(path))


@data_group.command("mnist")
@_data_options("data/mnist")
def data_mnist(
    out: str,
    from_dir: str | None,
    force: bool,
    mirrors: tuple[str, ...],
    skip_checksum: bool,
) -> None:
    """MNIST -> OUT/mnist_train_lmdb and OUT/mnist_test_lmdb."""
    _run_data("mnist", out, from_dir, force, mirrors, skip_checksum)


@data_group.command("fashion-mnist")
@_data_options("data/fashion-mnist")
def data_fashion_mnist(
    out: str,
    from_dir: str | None,
    force: bool,
    mirrors: tuple[str, ...],
    skip_checksum: bool,
) -> None:
    """Fashion-MNIST -> OUT/fashion_mnist_{train,test}_lmdb.

    Uses /usr/share/datasets/fashion-mnist/ (Debian's dataset-fashion-mnist
    package) when present, else downloads.
    """
    _run_data("fashion-mnist", out, from_dir, force, mirrors, skip_checksum)


@data_group.command("cifar10")
@_data_options(
    "data/cifar10",
    out_help="Folder for the tarball, the two LMDBs and mean.binaryproto.",
    from_help="Use this cifar-10-binary.tar.gz, or a folder holding it or its "
    "six .bin files, instead of downloading.",
    from_file_okay=True,
    checksum_help="Do not check the tarball against the published MD5, nor "
    "that each batch has 10000 records (files you made yourself).",
)
def data_cifar10(
    out: str,
    from_dir: str | None,
    force: bool,
    mirrors: tuple[str, ...],
    skip_checksum: bool,
) -> None:
    """CIFAR-10 -> OUT/cifar10_{train,test}_lmdb and OUT/mean.binaryproto.

    Caffe's get_cifar10.sh and create_cifar10.sh: the binary version tarball,
    converted as convert_cifar_data does, and the train set's mean as
    compute_image_mean writes it.
    """
    _run_data("cifar10", out, from_dir, force, mirrors, skip_checksum)


_backend_option = click.option(
    "--backend",
    type=click.Choice(["lmdb", "leveldb"]),
    default="lmdb",
    show_default=True,
    help="Database backend (leveldb needs the `leveldb` extra).",
)


@data_group.command("images")
@click.argument("listfile", type=click.Path(exists=True, dir_okay=False))
@click.argument("root")
@click.argument("out", type=click.Path(file_okay=False))
@click.option(
    "--resize_height", type=int, default=0, help="Height images are resized to."
)
@click.option(
    "--resize_width", type=int, default=0, help="Width images are resized to."
)
@click.option("--gray", is_flag=True, help="Treat images as grayscale ones.")
@click.option("--shuffle", is_flag=True, help="Randomly shuffle the images.")
@click.option("--seed", type=int, default=None, help="Seed of --shuffle.")
@click.option("--encoded", is_flag=True, help="Store the encoded image in the Datum.")
@click.option(
    "--encode_type",
    default="",
    help="Encode the images as this type ('png', 'jpg', ...); implies --encoded.",
)
@click.option(
    "--check_size", is_flag=True, help="Check that all the Datums have the same size."
)
@_backend_option
@click.option("--force", is_flag=True, help="Replace an existing OUT.")
def data_images(
    listfile: str,
    root: str,
    out: str,
    resize_height: int,
    resize_width: int,
    gray: bool,
    shuffle: bool,
    seed: int | None,
    encoded: bool,
    encode_type: str,
    check_size: bool,
    backend: str,
    force: bool,
) -> None:
    """Caffe's convert_imageset: the images of LISTFILE -> database OUT.

    LISTFILE has one `path label` line per image; ROOT is prepended to each
    path as written (end it with '/'). Keys are %08d_PATH, Datums as
    ReadImageToDatum makes them.
    """
    from caffesolve.data.datasets import default_reporter
    from caffesolve.data.imageset import convert_imageset

    reporter = default_reporter()
    convert_imageset(
        listfile,
        root,
        out,
        resize_height=resize_height,
        resize_width=resize_width,
        gray=gray,
        shuffle=shuffle,
        seed=seed,
        encoded=encoded,
        encode_type=encode_type,
        check_size=check_size,
        backend=backend,
        force=force,
        report=reporter.line,
    )
    click.echo(out)


@data_group.command("mean")
@click.argument("db", type=click.Path(exists=True, file_okay=False))
@click.argument("out", required=False, type=click.Path(dir_okay=False))
@_backend_option
@click.option("--force", is_flag=True, help="Replace an existing OUT.")
def data_mean(db: str, out: str | None, backend: str, force: bool) -> None:
    """Caffe's compute_image_mean: the mean image of DB -> OUT (.binaryproto),
    and the per-channel means."""
    from caffesolve.data.datasets import default_reporter
    from caffesolve.data.db import refuse_existing
    from caffesolve.data.image_mean import compute_image_mean, write_mean

    reporter = default_reporter()
    if out is not None:
        refuse_existing(out, force=force)
    mean = compute_image_mean(db, backend)
    reporter.line(f"Processed {mean.count} files.")
    if out is not None:
        reporter.line(f"Write to {out}")
        write_mean(out, mean, force)
    reporter.line(f"Number of channels: {len(mean.channel_means)}")
    for c, m in enumerate(mean.channel_means):
        reporter.line(f"mean_value channel [{c}]: {m:.6g}")
    if out is not None:
        click.echo(out)


@data_group.command("sine")
@click.option(
    "--out",
    default="data/sine",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for train.h5, test.h5 and their list files.",
)
@click.option("--force", is_flag=True, help="Rebuild existing files.")
@click.option("--seed", default=1701, show_default=True, help="Random seed.")
def data_sine(out: str, force: bool, seed: int) -> None:
    """Noisy sine waves as HDF5 for configs/lstm_sine (an LSTM predicting
    the next value): OUT/train.txt and OUT/test.txt list the .h5 files."""
    from caffesolve.data.sine import write_sine_dataset

    for path in write_sine_dataset(out, force=force, seed=seed):
        click.echo(str(path))


# -- lr-schedule ---------------------------------------------------------------


def _schedule_rows(
    iters: Any, columns: dict[str, Any], names: list[str]
) -> list[list[str]]:
    """Table cells: the iteration, then each rate as Caffe prints it."""
    from caffesolve.log import fmt

    return [
        [str(int(it))] + [fmt(columns[n][i]) for n in names]
        for i, it in enumerate(iters)
    ]


def _render_schedule(
    solver: str, policy: str, header: list[str], rows: list[list[str]], form: str
) -> str:
    """The schedule as an aligned table, CSV or JSON (rates at Caffe precision)."""
    import csv
    import io
    import json
    import math

    if form == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        return buf.getvalue()
    if form == "json":

        def number(cell: str) -> float | None:
            x = float(cell)
            return x if math.isfinite(x) else None

        records = [
            {
                "iteration": int(r[0]),
                **{h: number(c) for h, c in zip(header[1:], r[1:])},
            }
            for r in rows
        ]
        doc = {"solver": solver, "lr_policy": policy, "rows": records}
        return json.dumps(doc, indent=1) + "\n"
    widths = [max(len(c) for c in col) for col in zip(header, *rows)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in [header, *rows]]
    return "\n".join(lines) + "\n"


def _plot_schedule(path: str, title: str, iters: Any, columns: dict[str, Any]) -> None:
    """Draw the rates against the iteration into a PNG (matplotlib, Agg)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise click.ClickException(
            "--plot needs matplotlib: pip install 'caffesolve[plot]'"
        ) from None
    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, rates in columns.items():
        ax.plot(iters, rates, label=name)
    ax.set_xlabel("iteration")
    ax.set_ylabel("lr")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if len(columns) > 1:
        ax.legend()
    fig.tight_layout()
    try:
        fig.savefig(path, format="png")
    except OSError as e:
        raise click.ClickException(f"{path}: cannot write plot ({e})") from None


# Memory per printed row of lr-schedule, measured with one policy (Python
# strings and lists; a million rows: table 350 MB, csv 260 MB, json 1.1 GB).
_ROW_BYTES = {"table": 350, "csv": 260, "json": 1100}


def _free_memory() -> int:
    """Bytes of memory available to a new allocation (MemAvailable)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 1 << 62  # cannot tell: let the allocation decide


def _size(n: float) -> str:
    """A byte count in the largest unit that keeps it >= 1 (1.5 GB)."""
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.3g} {unit}"
        n /= 1000
    raise AssertionError  # pragma: no cover


@cli.command("lr-schedule")
@click.argument("solver", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--start",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="First iteration.",
)
@click.option(
    "--stop",
    type=click.IntRange(min=0),
    default=None,
    help="Last iteration, included  [default: max_iter]",
)
@click.option(
    "--every",
    type=click.IntRange(min=1),
    default=None,
    help="Rows every N iterations  [default: display; about 20 rows when display is 0]",
)
@click.option(
    "--format",
    "form",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
    help="Output format (stdout).",
)
@_set_option
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="FILE.png",
    help="Also draw the schedule into a PNG (needs matplotlib).",
)
@click.option(
    "--compare",
    default=None,
    metavar="POLICY[,POLICY...]",
    help="Add a column (and a plot line) per lr_policy, each using the "
    "solver's other fields, e.g. --compare step,poly.",
)
def lr_schedule(
    solver: str,
    start: int,
    stop: int | None,
    every: int | None,
    form: str,
    overrides: tuple[str, ...],
    plot: str | None,
    compare: str | None,
) -> None:
    """Print the learning rate Caffe would use at each iteration.

    \b
    caffesolve lr-schedule configs/lenet_solver.prototxt
    caffesolve lr-schedule SOLVER --format csv --every 1000
    caffesolve lr-schedule SOLVER --set lr_policy=step --set stepsize=2000
    caffesolve lr-schedule SOLVER --compare step,poly --plot lr.png

    Rows run from --start to --stop (max_iter) every --every (display)
    iterations; rates print with Caffe's 6 significant digits. multistep
    counts the stepvalues <= iteration, as the solver does stepping each
    iteration.
    """
    import numpy as np

    from caffesolve.lr_policy import POLICIES, policy_schedules
    from caffesolve.proto.io import suggest
    from caffesolve.solver_param import load_solver

    param = load_solver(solver, overrides, validate=False)
    last = param.max_iter if stop is None else stop
    if last < start:
        raise click.BadParameter(
            f"--stop {last} is before --start {start}", param_hint="--stop"
        )
    step = every or (param.display if param.display > 0 else -(-(last - start) // 20))
    step = max(step, 1)
    names = [param.lr_policy]
    for name in (compare or "").split(","):
        name = name.strip()
        if name and name not in POLICIES:
            raise click.BadParameter(
                f"unknown lr_policy '{name}'{suggest(name, list(POLICIES))} "
                f"(supported: {', '.join(POLICIES)})",
                param_hint="--compare",
            )
        if name and name not in names:
            names.append(name)
    count = (last - start) // step + 1
    need = count * (_ROW_BYTES[form] + 100 * (len(names) - 1))
    too_many = click.ClickException(
        f"--start {start} --stop {last} --every {step} make {count:,} rows, "
        f"which need about {_size(need)} of memory to print ({_size(_free_memory())} "
        "free); raise --every or narrow --start/--stop"
    )
    if need > _free_memory():
        raise too_many
    try:
        iters = np.arange(start, last + 1, step, dtype=np.int64)
        columns = policy_schedules(param, names, iters, solver)
        header = ["iteration"] + (names if len(names) > 1 else ["lr"])
        rows = _schedule_rows(iters, columns, names)
        text = _render_schedule(solver, param.lr_policy, header, rows, form)
    except MemoryError:
        raise too_many from None
    click.echo(text, nl=False)
    if plot:
        span = last - start
        points = np.linspace(start, last, min(span + 1, 200_001))
        dense = np.unique(points.astype(np.int64))
        curves = policy_schedules(param, names, dense, solver)
        shown = click.format_filename(solver, shorten=True)
        title = f"{shown}: lr_policy {param.lr_policy}"
        _plot_schedule(plot, title, dense, curves)
        click.echo(f"Wrote {plot}", err=True)


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


# -- train / test --------------------------------------------------------------


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
@_set_option
@_log_option
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

    with _logging_to(log_file), _one_rank_fails_all():
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
@_log_option
def test(model: str, weights: str, iterations: int, log_file: str | None) -> None:
    """Score a model, as `caffe test`: each batch's outputs, then the means.

    \b
    caffesolve test --model lenet_train_test.prototxt \\
        --weights lenet_iter_10000.caffemodel --iterations 100
    """
    from caffesolve import tools

    with _logging_to(log_file):
        tools.score(model, weights, iterations)


def main() -> None:
    """Console entry point (caffesolve.__main__.main wraps it)."""
    cli(prog_name="caffesolve")


# -- export / parse-log / plot / draw ------------------------------------------


def _batch_choice(value: str | None) -> int | str | None:
    """--batch: None (the net's own), a positive int, or 'dynamic'."""
    if value is None or value == "dynamic":
        return value
    if value.isdigit() and int(value) > 0:
        return int(value)
    raise click.BadParameter(
        f"'{value}' is neither a positive batch size nor 'dynamic'",
        param_hint="--batch",
    )


@cli.command("export")
@click.argument("net_file", type=click.Path(exists=True, dir_okay=False))
@click.argument("weights", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    metavar="MODEL.onnx",
    help="Where to write the ONNX model.",
)
@click.option(
    "--opset",
    type=int,
    default=22,
    show_default=True,
    help="ONNX opset (22 or later).",
)
@click.option(
    "--batch",
    default=None,
    metavar="N|dynamic",
    help="Fix the batch size at N, or leave it open (dynamic)  "
    "[default: the net's own, fixed]",
)
@click.option(
    "--check",
    is_flag=True,
    help="Also run onnxruntime and caffesolve on the same random inputs and "
    "print the largest difference (fails above 1e-5 relative).",
)
def export_command(
    net_file: str, weights: str, output: str, opset: int, batch: str | None, check: bool
) -> None:
    """Write a deploy net and its weights as an ONNX model.

    \b
    caffesolve export configs/lenet.prototxt lenet_iter_10000.caffemodel -o lenet.onnx
    caffesolve export NET WEIGHTS -o model.onnx --batch dynamic --check

    Every layer maps to ONNX operators that compute what Caffe computes; a
    layer with no exact ONNX form is an error naming it, and nothing is written.
    """
    from caffesolve.errors import require_extra

    size = _batch_choice(batch)
    require_extra("onnx", "onnx", "caffesolve export needs onnx")
    if check:
        require_extra(
            "onnxruntime", "onnx", "caffesolve export --check needs onnxruntime"
        )
    from caffesolve.export import convert
    from caffesolve.log import fmt

    fixed = size if isinstance(size, int) else None
    net = convert.load_deploy_net(net_file, weights, fixed)
    model = convert.export_net(net, opset, dynamic_batch=size == "dynamic")
    if check:
        own = net.input_blobs[0].shape[0] if net.input_blobs else 1
        batches = [own] if size != "dynamic" else [own, 3 if own == 2 else 2]
        diffs = [
            d for n in batches for d in convert.compare_with_onnxruntime(net, model, n)
        ]
        worst = max(diffs, key=lambda d: d.max_rel)
        click.echo(
            f"onnxruntime vs caffesolve: largest difference {fmt(worst.max_abs)} "
            f"({fmt(worst.max_rel)} of the largest output) at output "
            f"'{worst.output}', batch {worst.batch}; {len(diffs)} outputs compared"
        )
        if not worst.max_rel <= convert.TOLERANCE:
            raise click.ClickException(
                f"{net_file}: onnxruntime differs from caffesolve by more than "
                f"{fmt(convert.TOLERANCE)} relative; {output} not written"
            )
    convert.write_model(model, output)
    shown = "dynamic" if size == "dynamic" else str(net.input_blobs[0].shape[0])
    click.echo(
        f"Wrote {output} (opset {opset}, IR version {model.ir_version}, batch "
        f"{shown}, {len(model.graph.node)} nodes)",
        err=True,
    )


@cli.command("parse-log")
@click.argument("log_file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder for LOG.train and LOG.test  [default: the log's folder]",
)
def parse_log_command(log_file: str, out_dir: str | None) -> None:
    """Write a training log's train and test tables as CSV (parse_log.py).

    \b
    caffesolve parse-log train.log              # -> train.log.train, train.log.test
    caffesolve parse-log caffe.INFO --out csv/

    Columns: NumIters, Seconds (since "Solving"), LearningRate, then every
    net output. Caffe's logs and caffesolve's alike.
    """
    from caffesolve.logs import write_tables

    for path in write_tables(log_file, out_dir):
        click.echo(str(path))


def _curves(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@cli.command("plot")
@click.argument("logs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option(
    "--out",
    default="curves.png",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="The picture (.png, .svg or .pdf).",
)
@click.option(
    "--x",
    "x_axis",
    type=click.Choice(["iters", "seconds"]),
    default="iters",
    show_default=True,
    help="Horizontal axis.",
)
@click.option(
    "--y",
    "curves",
    default="loss,accuracy,lr",
    show_default=True,
    help="Curves: loss (train and test), accuracy (test, own axis), lr.",
)
def plot_command(logs: tuple[str, ...], out: str, x_axis: str, curves: str) -> None:
    """Draw training and test curves from one or more training logs.

    \b
    caffesolve plot train.log
    caffesolve plot sgd.log adam.log --out compare.png --y loss,accuracy
    caffesolve plot train.log --x seconds --y lr
    """
    from caffesolve.plot import plot_logs

    plot_logs(list(logs), out, x_axis, _curves(curves))
    click.echo(f"Wrote {out}", err=True)


@cli.command("draw")
@click.argument("net_file", type=click.Path(exists=True, dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False), metavar="OUT.png|svg")
@click.option(
    "--rankdir",
    type=click.Choice(["LR", "TB", "BT", "RL"]),
    default="LR",
    show_default=True,
    help="Layout direction: left to right, top to bottom, ...",
)
@click.option(
    "--phase",
    type=click.Choice(["TRAIN", "TEST", "ALL"], case_sensitive=False),
    default="ALL",
    show_default=True,
    help="Draw the layers of this phase only (ALL: every layer).",
)
def draw_command(net_file: str, out: str, rankdir: str, phase: str) -> None:
    """Draw a net prototxt as a graph, like Caffe's draw_net.py.

    \b
    caffesolve draw configs/lenet_train_test.prototxt lenet.png
    caffesolve draw NET.prototxt net.svg --rankdir TB --phase TEST
    caffesolve draw NET.prototxt net.dot     # DOT text, no Graphviz needed

    Needs pydot (pip install 'caffesolve[draw]') and Graphviz's dot program.
    """
    from caffesolve.draw import draw_net_file
    from caffesolve.proto import caffe_pb2

    chosen = None if phase.upper() == "ALL" else caffe_pb2.Phase.Value(phase.upper())
    draw_net_file(net_file, out, rankdir, chosen)
    click.echo(f"Wrote {out}", err=True)
