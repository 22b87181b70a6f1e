"""`caffesolve lr-schedule`: rows, formats, --set, --compare, --plot, errors."""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path

import pytest
from conftest import EXAMPLES, run_cli

# Caffe's examples/mnist/lenet_solver.prototxt (its numbers, our file).
LENET = """net: "lenet_train_test.prototxt"
test_iter: 100
test_interval: 500
base_lr: 0.01
momentum: 0.9
weight_decay: 0.0005
lr_policy: "inv"
gamma: 0.0001
power: 0.75
display: 100
max_iter: 10000
snapshot: 5000
snapshot_prefix: "examples/mnist/lenet"
solver_mode: GPU
"""


@pytest.fixture
def lenet(tmp_path: Path) -> Path:
    path = tmp_path / "lenet_solver.prototxt"
    path.write_text(LENET)
    return path


def rows_of_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_default_table_is_display_steps_to_max_iter(lenet: Path) -> None:
    code, out, _ = run_cli("lr-schedule", str(lenet))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["iteration", "lr"]
    table = dict(line.split() for line in lines[1:])
    assert len(table) == 101  # 0, 100, ..., 10000
    assert table["0"] == "0.01"
    assert table["100"] == "0.00992565"
    assert table["1000"] == "0.00931012"
    assert table["10000"] == "0.00594604"
    # right-aligned columns
    assert len({len(line) for line in lines}) == 1


def test_csv_parses(lenet: Path) -> None:
    code, out, _ = run_cli(
        "lr-schedule", str(lenet), "--format", "csv", "--every", "1000"
    )
    assert code == 0
    rows = rows_of_csv(out)
    assert [r["iteration"] for r in rows] == [str(i) for i in range(0, 10001, 1000)]
    assert rows[1]["lr"] == "0.00931012"


def test_json_loads(lenet: Path) -> None:
    args = ("--format", "json", "--start", "100", "--stop", "300")
    code, out, _ = run_cli("lr-schedule", str(lenet), *args)
    assert code == 0
    doc = json.loads(out)
    assert doc["lr_policy"] == "inv"
    assert doc["rows"][0] == {"iteration": 100, "lr": 0.00992565}
    assert [r["iteration"] for r in doc["rows"]] == [100, 200, 300]


def test_set_overrides_policy(lenet: Path) -> None:
    args = ("--set", "lr_policy=step", "--set", "stepsize=2000", "--set", "gamma=0.1")
    code, out, _ = run_cli("lr-schedule", str(lenet), *args, "--format", "csv")
    assert code == 0
    rates = {int(r["iteration"]): float(r["lr"]) for r in rows_of_csv(out)}
    for it, rate in rates.items():
        assert rate == pytest.approx(0.01 * 0.1 ** (it // 2000), rel=1e-5)
    assert rates[1900] == 0.01 and rates[2000] == 0.001


def test_start_stop_every(lenet: Path) -> None:
    args = ("--start", "5", "--stop", "26", "--every", "7", "--format", "csv")
    code, out, _ = run_cli("lr-schedule", str(lenet), *args)
    assert code == 0
    assert [r["iteration"] for r in rows_of_csv(out)] == ["5", "12", "19", "26"]


def test_display_zero_gives_about_twenty_rows(lenet: Path) -> None:
    code, out, _ = run_cli("lr-schedule", str(lenet), "--set", "display=0")
    assert code == 0
    iterations = [int(line.split()[0]) for line in out.splitlines()[1:]]
    assert iterations[0] == 0 and iterations[-1] == 10000
    assert len(iterations) == 21


def test_multistep_example(tmp_path: Path) -> None:
    path = tmp_path / "multistep.prototxt"
    text = LENET.replace('"inv"', '"multistep"').replace("gamma: 0.0001", "gamma: 0.9")
    path.write_text(text + "stepvalue: 5000\nstepvalue: 7000\nstepvalue: 8000\n")
    code, out, _ = run_cli("lr-schedule", str(path), "--format", "csv")
    assert code == 0
    rates = {r["iteration"]: r["lr"] for r in rows_of_csv(out)}
    assert (rates["4900"], rates["5000"], rates["7000"], rates["10000"]) == (
        "0.01",
        "0.009",
        "0.0081",
        "0.00729",
    )


def test_compare_adds_a_column_per_policy(lenet: Path) -> None:
    args = ("--compare", "step,poly", "--set", "stepsize=3000", "--set", "gamma=0.5")
    code, out, _ = run_cli("lr-schedule", str(lenet), *args, "--format", "csv")
    assert code == 0
    rows = rows_of_csv(out)
    assert list(rows[0]) == ["iteration", "inv", "step", "poly"]
    at = {int(r["iteration"]): r for r in rows}
    assert at[6000]["step"] == "0.0025"
    # poly with the solver's power 0.75, max_iter 10000
    assert float(at[5000]["poly"]) == pytest.approx(0.01 * 0.5**0.75, rel=1e-5)
    assert at[10000]["poly"] == "0"


def test_compare_needs_the_policys_fields(lenet: Path) -> None:
    code, _, err = run_cli("lr-schedule", str(lenet), "--compare", "step")
    assert code == 1
    assert "stepsize" in err and str(lenet) in err
    assert len(err.strip().splitlines()) == 1


def test_compare_unknown_policy_is_a_usage_error(lenet: Path) -> None:
    code, _, err = run_cli("lr-schedule", str(lenet), "--compare", "stpe")
    assert code == 2
    assert "did you mean `step`" in err


def test_poly_past_max_iter_json_null(lenet: Path) -> None:
    args = ("--set", "lr_policy=poly", "--stop", "10100", "--format", "json")
    code, out, _ = run_cli("lr-schedule", str(lenet), *args)
    assert code == 0
    rows = json.loads(out)["rows"]
    assert rows[-2] == {"iteration": 10000, "lr": 0.0}
    assert rows[-1] == {"iteration": 10100, "lr": None}


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--set", "base_lR=1"), ["base_lR", "did you mean `base_lr`"]),
        (("--set", "lr_policy=cosine"), ["lr_policy", "cosine", "multistep"]),
        (("--set", "lr_policy=step"), ["stepsize must be > 0"]),
        (("--set", "stepsize=half"), ["stepsize", "half"]),
    ],
)
def test_user_errors_are_one_line_exit_1(
    lenet: Path, args: tuple[str, ...], words: list[str]
) -> None:
    code, out, err = run_cli("lr-schedule", str(lenet), *args)
    assert code == 1
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {lenet}")
    for w in words:
        assert w in lines[0]


def test_syntax_error_line_col(tmp_path: Path) -> None:
    path = tmp_path / "bad.prototxt"
    path.write_text('base_lr: 0.01\nlr_policy: "inv"\ngamma 0.1 0.2\n')
    code, _, err = run_cli("lr-schedule", str(path))
    assert code == 1
    assert f"{path}:3:" in err


def test_stop_before_start_is_a_usage_error(lenet: Path) -> None:
    code, _, _ = run_cli("lr-schedule", str(lenet), "--start", "50", "--stop", "10")
    assert code == 2


def test_plot_writes_png(lenet: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "lr.png"
    code, out, err = run_cli(
        "lr-schedule", str(lenet), "--plot", str(png), "--compare", "poly,exp"
    )
    assert code == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.splitlines()[0].split() == ["iteration", "inv", "poly", "exp"]
    assert str(png) in err


def test_plot_without_matplotlib(
    lenet: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, _, err = run_cli("lr-schedule", str(lenet), "--plot", str(tmp_path / "x.png"))
    assert code == 1
    assert "matplotlib" in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(not EXAMPLES.is_dir(), reason="caffe-examples absent")
def test_caffe_example_solver_unchanged() -> None:
    path = EXAMPLES / "mnist__lenet_multistep_solver.prototxt"
    code, out, _ = run_cli("lr-schedule", str(path), "--format", "json")
    assert code == 0
    rows = {r["iteration"]: r["lr"] for r in json.loads(out)["rows"]}
    assert rows[9500] == 0.0059049
    assert math.isclose(rows[9400], 0.01 * 0.9**4, rel_tol=1e-6)


def test_help_mentions_examples() -> None:
    code, out, _ = run_cli("lr-schedule", "--help")
    assert code == 0
    assert "--compare" in out and "--set" in out and "--plot" in out
