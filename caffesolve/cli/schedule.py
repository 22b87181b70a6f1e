"""`caffesolve lr-schedule`: the rates Caffe would use, as a table, CSV,
JSON or a picture.
"""

from __future__ import annotations

import os
from typing import Any

import click

from caffesolve.cli import cli, set_option


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
@set_option
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
    from caffesolve.plot import plot_schedule
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
        plot_schedule(plot, title, dense, curves)
        click.echo(f"Wrote {plot}", err=True)
