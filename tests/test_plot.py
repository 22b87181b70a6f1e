"""`caffesolve plot`: the curves drawn are the log's numbers (read off the
Caffe excerpt by hand), test accuracy on its own axis, logs overlaid."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from caffesolve.cli import cli
from caffesolve.logs import parse_log

pytest.importorskip("matplotlib")

from caffesolve.plot import make_figure  # noqa: E402

CAFFE_LOG = Path(__file__).parent / "data" / "caffe_lenet_mnist.log"
PNG = b"\x89PNG\r\n\x1a\n"


def lines_by_label(fig: object) -> dict[str, tuple[object, list, list]]:
    found = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            found[line.get_label()] = (
                ax,
                list(line.get_xdata()),
                list(line.get_ydata()),
            )
    return found


def test_curves_are_the_logs_numbers() -> None:
    fig = make_figure([("caffe", parse_log(CAFFE_LOG))])
    lines = lines_by_label(fig)
    assert set(lines) == {"train loss", "test loss", "test accuracy", "lr"}
    ax, xs, ys = lines["train loss"]
    assert xs == [0, 100, 200, 300, 400, 500, 600]
    assert ys[0] == 2.34839 and ys[-1] == 0.0923445
    acc_ax, xs, ys = lines["test accuracy"]
    assert xs == [0, 500, 700] and ys == [0.0838, 0.9727, 0.9781]
    assert acc_ax is not ax and acc_ax.get_ylabel() == "test accuracy"
    assert ax.get_ylabel() == "loss"
    lr_ax, xs, ys = lines["lr"]
    assert lr_ax.get_ylabel() == "lr" and ys[1] == 0.00992565


def test_seconds_axis_and_one_curve() -> None:
    fig = make_figure([("caffe", parse_log(CAFFE_LOG))], x="seconds", y=["accuracy"])
    lines = lines_by_label(fig)
    assert set(lines) == {"test accuracy"}
    _, xs, _ = lines["test accuracy"]
    assert xs[0] == pytest.approx(0.08741, abs=1e-6)


def test_two_logs_overlaid_into_a_png(tmp_path: Path) -> None:
    other = tmp_path / "again.log"
    other.write_text(CAFFE_LOG.read_text().replace("loss = 0.0923445", "loss = 0.5"))
    out = tmp_path / "curves.png"
    result = CliRunner().invoke(
        cli, ["plot", str(CAFFE_LOG), str(other), "--out", str(out), "--y", "loss"]
    )
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == PNG
    fig = make_figure(
        [("a", parse_log(CAFFE_LOG)), ("b", parse_log(other))], y=["loss"]
    )
    lines = lines_by_label(fig)
    assert {"a: train loss", "b: train loss", "a: test loss", "b: test loss"} == set(
        lines
    )
    assert lines["b: train loss"][2][-1] == 0.5
    assert lines["a: train loss"][0] is lines["b: train loss"][0]
    assert lines["a: train loss"][0].get_lines()[0].get_color() != (
        lines["b: train loss"][0].get_lines()[2].get_color()
    )


def test_bad_curve_and_missing_values_are_errors(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["plot", str(CAFFE_LOG), "--y", "loss,speed"])
    assert result.exit_code == 1
    assert "--y: unknown curve speed (choose from loss, accuracy, lr)" in result.output
    no_test = tmp_path / "train_only.log"
    no_test.write_text(
        "".join(ln for ln in CAFFE_LOG.open() if "Test net output" not in ln)
    )
    result = CliRunner().invoke(
        cli, ["plot", str(no_test), "--y", "accuracy", "--out", str(tmp_path / "x.png")]
    )
    assert result.exit_code == 1
    assert "train_only.log: no accuracy values to plot" in result.output
