"""Training curves from Caffe / caffesolve logs (matplotlib, the `plot` extra).

What Caffe's tools/extra/plot_training_log.py drew, on one figure: the train
and test losses (left axis), test accuracy on its own axis (right), the
learning rate below; several logs overlaid, one colour per log. The rows are
logs.py's tables, so a curve is exactly what `caffesolve parse-log` writes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from caffesolve.errors import ConfigError, DataError, require_extra
from caffesolve.logs import ParsedLog, Table, parse_log

CURVES = ("loss", "accuracy", "lr")
X_AXES = {"iters": ("NumIters", "iteration"), "seconds": ("Seconds", "seconds")}


def _is_loss(name: str) -> bool:
    return "loss" in name.lower()


def _is_accuracy(name: str) -> bool:
    return "acc" in name.lower()


def _series(table: Table, x: str, column: str) -> tuple[list[float], list[float]]:
    return table.column(X_AXES[x][0]), table.column(column)


def make_figure(
    logs: Sequence[tuple[str, ParsedLog]],
    x: str = "iters",
    y: Sequence[str] = CURVES,
) -> Any:
    """A matplotlib Figure of `logs` ((label, tables) pairs). `y` picks the
    curves: loss, accuracy, lr. Raises DataError when no log has any."""
    require_extra("matplotlib", "plot", "caffesolve plot needs matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    unknown = [c for c in y if c not in CURVES]
    if unknown or not y:
        raise ConfigError(
            f"--y: unknown curve {', '.join(unknown) or '(none)'} "
            f"(choose from {', '.join(CURVES)})"
        )
    if x not in X_AXES:
        raise ConfigError(f"--x: unknown axis {x} (choose from {', '.join(X_AXES)})")
    with_lr = "lr" in y
    fig = Figure(figsize=(9, 6.5 if with_lr else 5), dpi=100)
    FigureCanvasAgg(fig)
    if with_lr and len(y) > 1:
        main, lr_ax = fig.subplots(
            2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]}
        )
    elif with_lr:
        main, lr_ax = None, fig.add_subplot()
    else:
        main, lr_ax = fig.add_subplot(), None
    acc_ax = None
    if main is not None and "accuracy" in y:
        acc_ax = main.twinx() if "loss" in y else main
    drawn = {c: 0 for c in y}
    several = len(logs) > 1
    for k, (label, parsed) in enumerate(logs):
        prefix = f"{label}: " if several else ""

        def colour(curve: int, log: int = k) -> str:
            """One colour per log when several, else one per curve."""
            return f"C{(log if several else curve) % 10}"

        if main is not None and "loss" in y:
            for kind, table, style in (
                ("train", parsed.train, "-"),
                ("test", parsed.test, "--o"),
            ):
                for name in filter(_is_loss, table.outputs()):
                    xs, ys = _series(table, x, name)
                    main.plot(
                        xs,
                        ys,
                        style,
                        color=colour(0 if kind == "train" else 1),
                        markersize=3,
                        alpha=0.6 if kind == "train" else 0.95,
                        label=f"{prefix}{kind} {name}",
                    )
                    drawn["loss"] += 1
        if acc_ax is not None:
            for name in filter(_is_accuracy, parsed.test.outputs()):
                xs, ys = _series(parsed.test, x, name)
                acc_ax.plot(
                    xs,
                    ys,
                    ":s",
                    color=colour(2),
                    markersize=3,
                    label=f"{prefix}test {name}",
                )
                drawn["accuracy"] += 1
        if lr_ax is not None:
            table = parsed.train if parsed.train.rows else parsed.test
            xs, ys = _series(table, x, "LearningRate")
            lr_ax.plot(xs, ys, "-", color=colour(3), label=f"{prefix}lr")
            drawn["lr"] += 1
    empty = [c for c, n in drawn.items() if n == 0]
    if empty:
        names = ", ".join(label for label, _ in logs)
        raise DataError(f"{names}: no {' or '.join(empty)} values to plot")
    if not several:
        fig.suptitle(logs[0][0], fontsize=10)
    _label_axes(fig, main, acc_ax, lr_ax, X_AXES[x][1], several)
    return fig


def _label_axes(
    fig: Any, main: Any, acc_ax: Any, lr_ax: Any, x_label: str, several: bool
) -> None:
    handles: list[Any] = []
    labels: list[str] = []
    if main is not None:
        if acc_ax is not main:
            main.set_ylabel("loss")
        main.grid(True, alpha=0.3)
        for ax in {id(a): a for a in (main, acc_ax) if a is not None}.values():
            h, lab = ax.get_legend_handles_labels()
            handles += h
            labels += lab
        main.legend(handles, labels, fontsize=8, loc="best")
        if acc_ax is not None:
            acc_ax.set_ylabel("test accuracy")
        if lr_ax is None:
            main.set_xlabel(x_label)
    if lr_ax is not None:
        lr_ax.set_ylabel("lr")
        lr_ax.grid(True, alpha=0.3)
        lr_ax.set_xlabel(x_label)
        if several and main is None:
            lr_ax.legend(fontsize=8)
    fig.tight_layout()


def plot_logs(
    paths: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    x: str = "iters",
    y: Sequence[str] = CURVES,
) -> None:
    """Draw the curves of the logs at `paths` into `out` (.png, .svg, .pdf)."""
    logs = [(Path(p).name, parse_log(p)) for p in paths]
    _save(make_figure(logs, x, y), out)


def _save(fig: Any, path: str | os.PathLike[str]) -> None:
    """Write the figure; the format follows the suffix (.png, .svg, .pdf)."""
    try:
        fig.savefig(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot write the plot ({e})") from None


def plot_schedule(
    path: str | os.PathLike[str], title: str, iters: Any, columns: dict[str, Any]
) -> None:
    """Draw learning rates (one line per policy in `columns`) against the
    iteration into the picture `path` (`caffesolve lr-schedule --plot`)."""
    require_extra("matplotlib", "plot", "--plot needs matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

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
    _save(fig, path)
