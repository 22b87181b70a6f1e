"""The main job on real data: LeNet on Fashion-MNIST reaches 85% accuracy.

`caffesolve data fashion-mnist` builds the LMDBs from Debian's
dataset-fashion-mnist package (which .ci/run installs), then Caffe's LeNet
solver settings (configs/fashion/lenet_solver.prototxt) train for 1000
iterations and test on the full 10,000-image test set (test_iter 100 x batch
100). The accuracy is read from the log line Caffe's log tools parse.
"""

from __future__ import annotations

import io
import os
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from caffesolve import tools
from caffesolve.cli import cli
from caffesolve.log import LOG

ROOT = Path(__file__).resolve().parents[1]
DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def test_lenet_learns_fashion_mnist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not DEBIAN.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{DEBIAN} is missing: .ci/run should install it")
        pytest.skip(f"{DEBIAN} missing (apt-get install dataset-fashion-mnist)")
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    made = CliRunner().invoke(cli, ["data", "fashion-mnist"])
    assert made.exit_code == 0, made.output
    # The README's line run a second time: the databases are there and built
    # from the same files (their stamps), so `data` says so and succeeds.
    again = CliRunner().invoke(cli, ["data", "fashion-mnist"])
    assert again.exit_code == 0, again.output
    assert "are up to date (built from the same files); nothing to do" in again.stderr
    log = io.StringIO()
    monkeypatch.setattr(LOG, "streams", [log])
    monkeypatch.setattr(LOG, "quiet", False)
    solver = tools.train(
        "configs/fashion/lenet_solver.prototxt",
        overrides=[
            "max_iter=1000",
            "test_interval=1000",
            "snapshot=0",
            "snapshot_after_train=false",
            "random_seed=1701",
        ],  # fmt: skip
    )
    assert solver.iter == 1000
    text = log.getvalue()
    accuracy = [
        float(a)
        for a in re.findall(r"Test net output #\d+: accuracy = ([\d.e+-]+)", text)
    ]
    # Tested at iteration 0 (test_initialization) and at 1000.
    assert len(accuracy) == 2, text[-2000:]
    assert accuracy[0] < 0.3
    assert accuracy[1] >= 0.85, f"test accuracy {accuracy[1]} after 1000 iterations"
    losses = [float(x) for x in re.findall(r"Iteration \d+ \(.*\), loss = ([\d.e+-]+)",
                                           text)]  # fmt: skip
    assert losses[0] > 2.0 and losses[-1] < 0.7
