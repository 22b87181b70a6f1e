"""configs/cifar10: Caffe's CIFAR-10 examples (quick, full, full with
sigmoids, with and without BatchNorm) on a few generated CIFAR-10 images made
into data/cifar10 as `caffesolve data cifar10` makes them. Every net builds
as shipped; every solver trains a few iterations from copies of the configs
with batches of 10 (the shipped 100 and 1000 cost seconds an iteration
here), the second and third stages resuming from the snapshots of the ones
before, as Caffe's train_quick.sh and train_full.sh run them."""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from test_cifar10 import write_batches

from caffesolve.data.cifar10 import prepare_cifar10
from caffesolve.log import LOG
from caffesolve.net import Net
from caffesolve.proto import caffe_pb2

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "cifar10"
NETS = sorted(p.name for p in CONFIGS.glob("*.prototxt") if "solver" not in p.name)
SOLVERS = sorted(p.name for p in CONFIGS.glob("*solver*.prototxt"))
BATCH = 10


@pytest.fixture(scope="module")
def cifar_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/cifar10 (30 images in each of the six batches) under a new
    folder, made by the data tool from CIFAR-10's binary files."""
    work = tmp_path_factory.mktemp("cifar10")
    write_batches(work / "bins", records=30)
    LOG.quiet = True
    try:
        prepare_cifar10(work / "data" / "cifar10", work / "bins", verify=False)
    finally:
        LOG.quiet = False
    return work


def test_configs_are_caffes_examples() -> None:
    """Every example of Caffe's examples/cifar10 that trains on its
    databases is here: quick, full and full_sigmoid, with and without BN."""
    assert NETS == [
        "cifar10_full.prototxt",
        "cifar10_full_sigmoid_train_test.prototxt",
        "cifar10_full_sigmoid_train_test_bn.prototxt",
        "cifar10_full_train_test.prototxt",
        "cifar10_quick.prototxt",
        "cifar10_quick_train_test.prototxt",
    ]
    assert SOLVERS == [
        "cifar10_full_sigmoid_solver.prototxt",
        "cifar10_full_sigmoid_solver_bn.prototxt",
        "cifar10_full_solver.prototxt",
        "cifar10_full_solver_lr1.prototxt",
        "cifar10_full_solver_lr2.prototxt",
        "cifar10_quick_solver.prototxt",
        "cifar10_quick_solver_lr1.prototxt",
    ]
    for name in SOLVERS:
        text = (CONFIGS / name).read_text()
        net = re.search(r'^net: "(\S+)"', text, re.M)
        assert net and (ROOT / net.group(1)).is_file(), name
        prefix = re.search(r'^snapshot_prefix: "(\S+)"', text, re.M)
        assert prefix and prefix.group(1).startswith("data/cifar10/"), name


@pytest.mark.parametrize("name", NETS)
def test_net_builds_as_shipped(
    name: str, cifar_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The unchanged file builds in TRAIN and TEST from data/cifar10 (a
    deploy net from its Input), ending in ip1 (full) or ip2 (quick) of 10."""
    monkeypatch.chdir(cifar_data)
    for phase in (caffe_pb2.TRAIN, caffe_pb2.TEST):
        net = Net.from_prototxt(CONFIGS / name, phase, quiet=True)
        last = "ip2" if "quick" in name else "ip1"
        assert net.blob_by_name(last).shape[1] == 10
        assert net.blob_by_name("data").shape[1:] == (3, 32, 32)


def small_batch_copy(work: Path, cifar_data: Path) -> None:
    """A repository at `work`: configs/cifar10 copied with every batch_size
    10, and a copy of data/cifar10."""
    (work / "configs" / "cifar10").mkdir(parents=True)
    for p in CONFIGS.glob("*.prototxt"):
        text = re.sub(r"batch_size: \d+", f"batch_size: {BATCH}", p.read_text())
        (work / "configs" / "cifar10" / p.name).write_text(text)
    shutil.copytree(cifar_data / "data", work / "data")


def train(solver: str, iterations: int, *extra: str) -> str:
    code, _, err = run_cli(
        "train", f"configs/cifar10/{solver}", "--iterations", str(iterations),
        "--set", "test_iter=1", "--set", "display=1", "--set", "random_seed=1701",
        *extra,
    )  # fmt: skip
    assert code == 0, err
    return err


def losses(log: str) -> dict[int, float]:
    """Iteration -> the loss logged (each display line and the last one)."""
    return {
        int(i): float(v)
        for i, v in re.findall(r"Iteration (\d+)(?: \([^)]*\))?, loss = (\S+)", log)
    }


def rates(log: str) -> dict[int, float]:
    """Iteration -> the learning rate logged."""
    return {
        int(i): float(v) for i, v in re.findall(r"Iteration (\d+), lr = (\S+)", log)
    }


# Each stage: cifar10_{solver}.prototxt, the iteration it trains to, the
# snapshot data/cifar10/cifar10_{state} it resumes from, and its base_lr.
CHAINS = {
    "quick": [
        ("quick_solver", 2, None, 0.001),
        ("quick_solver_lr1", 3, "quick_iter_2.solverstate", 0.0001),
    ],
    "full": [
        ("full_solver", 2, None, 0.001),
        ("full_solver_lr1", 3, "full_iter_2.solverstate.h5", 0.0001),
        ("full_solver_lr2", 4, "full_iter_3.solverstate.h5", 1e-5),
    ],
    "full_sigmoid": [("full_sigmoid_solver", 2, None, 0.001)],
    "full_sigmoid_bn": [("full_sigmoid_solver_bn", 2, None, 0.001)],
}


@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_solvers_train_and_resume(
    chain: str, cifar_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each solver trains from data/cifar10: the first iteration's loss is
    about ln 10 (small initial weights: nearly equal scores for the 10
    classes), a test pass runs at iteration 0, each stage logs its own
    base_lr and continues the iterations of the one before, and snapshots
    land in data/cifar10 in the solver's format (HDF5 for full)."""
    work = tmp_path / "repo"
    small_batch_copy(work, cifar_data)
    monkeypatch.chdir(work)
    start = 0
    for stage, iterations, state, lr in CHAINS[chain]:
        solver = f"cifar10_{stage}.prototxt"
        extra = ("--snapshot", f"data/cifar10/cifar10_{state}") if state else ()
        log = train(solver, iterations, *extra)
        loss = losses(log)
        assert sorted(loss) == list(range(start, iterations + 1))
        assert all(math.isfinite(v) for v in loss.values())
        if state is None:
            assert loss[0] == pytest.approx(math.log(10), abs=0.1)
            assert "Test net output #0: accuracy = " in log
        assert rates(log) == {i: lr for i in range(start, iterations)}
        prefix = re.search(r'snapshot_prefix: "(\S+)"', (CONFIGS / solver).read_text())
        assert prefix
        h5 = "snapshot_format: HDF5" in (CONFIGS / solver).read_text()
        ext = ".caffemodel.h5" if h5 else ".caffemodel"
        assert Path(f"{prefix.group(1)}_iter_{iterations}{ext}").is_file()
        start = iterations


@pytest.mark.parametrize("kind", ["quick", "full"])
def test_deploy_net_takes_the_trained_weights(
    kind: str, cifar_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cifar10_{quick,full}.prototxt loads a snapshot of its train_test net
    and gives, for a test image less the mean, the softmax of the TEST net's
    scores for that image."""
    work = tmp_path / "repo"
    small_batch_copy(work, cifar_data)
    monkeypatch.chdir(work)
    train(f"cifar10_{kind}_solver.prototxt", 1)
    ext = ".caffemodel.h5" if kind == "full" else ".caffemodel"
    weights = f"data/cifar10/cifar10_{kind}_iter_1{ext}"
    test = Net.from_prototxt(
        f"configs/cifar10/cifar10_{kind}_train_test.prototxt",
        caffe_pb2.TEST,
        quiet=True,
    )
    test.copy_trained_layers_from(weights)
    test.forward()
    scores = test.blob_by_name("ip2" if kind == "quick" else "ip1").data[:1]
    deploy = Net.from_prototxt(CONFIGS / f"cifar10_{kind}.prototxt", quiet=True)
    deploy.copy_trained_layers_from(weights)
    deploy.input_blobs[0].data[...] = test.blob_by_name("data").data[:1]
    deploy.forward()
    e = np.exp(scores.astype(np.float64) - scores.max())
    np.testing.assert_allclose(deploy.output_blobs[0].data, e / e.sum(), rtol=1e-5)
