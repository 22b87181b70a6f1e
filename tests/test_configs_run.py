"""Every config in configs/ builds and trains a few iterations.

Each solver runs on tiny LMDBs written the way `caffesolve data` writes them
(same keys, same Datums), at the paths the configs name, from a scratch folder
laid out like the repository. The deploy nets build and run a forward pass.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from test_cifar10 import write_batches

from caffesolve import tools
from caffesolve.data.cifar10 import prepare_cifar10
from caffesolve.data.datasets import write_lmdb_atomic
from caffesolve.data.sine import write_sine_dataset
from caffesolve.log import LOG
from caffesolve.net import Net
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import read_prototxt

ROOT = Path(__file__).resolve().parents[1]
SOLVERS = sorted(p for p in (ROOT / "configs").rglob("*solver*.prototxt"))
DEPLOY = sorted((ROOT / "configs").rglob("lenet.prototxt"))


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with configs/, tiny MNIST-shaped and CIFAR-10 databases and
    sine waves under data/."""
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(ROOT / "configs", root / "configs")
    rng = np.random.default_rng(1701)
    for folder, prefix in (("mnist", "mnist"), ("fashion-mnist", "fashion_mnist")):
        (root / "data" / folder).mkdir(parents=True)
        for split, n in (("train", 130), ("test", 120)):
            images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
            labels = rng.integers(0, 10, size=n, dtype=np.uint8)
            write_lmdb_atomic(root / "data" / folder / f"{prefix}_{split}_lmdb",
                              images, labels)  # fmt: skip
    batches = tmp_path_factory.mktemp("cifar")
    write_batches(batches, records=20)
    prepare_cifar10(root / "data" / "cifar10", batches, verify=False)
    write_sine_dataset(root / "data" / "sine", steps=(100, 60))
    return root


@pytest.mark.parametrize("solver", SOLVERS, ids=_rel)
def test_solver_config_trains(
    solver: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(LOG, "quiet", True)
    param = read_prototxt(solver, caffe_pb2.SolverParameter())
    test_iters = ",".join("1" for _ in param.test_iter)
    overrides = ["max_iter=3", "display=1", "test_interval=2", "snapshot=0",
                 "snapshot_after_train=false", "random_seed=1701"]  # fmt: skip
    if test_iters:
        overrides.append(f"test_iter={test_iters}")
    untrained = tools.train(_rel(solver), overrides=[*overrides, "max_iter=0"])
    trained = tools.train(_rel(solver), overrides=overrides)
    assert trained.iter == 3
    before = [p.data for p in untrained.net.learnable_params]
    after = [p.data for p in trained.net.learnable_params]
    assert any(not np.array_equal(a, b) for a, b in zip(before, after)), (
        "three iterations left every weight unchanged"
    )
    assert all(np.isfinite(p).all() for p in after)


@pytest.mark.parametrize("deploy", DEPLOY, ids=_rel)
def test_deploy_net_runs_forward(deploy: Path) -> None:
    net = Net(read_prototxt(deploy, caffe_pb2.NetParameter()), caffe_pb2.TEST,
              rng=np.random.default_rng(1701), quiet=True)  # fmt: skip
    data = net.blob_by_name("data")
    data.data[...] = np.random.default_rng(0).random(data.shape)
    net.forward()
    prob = net.output_blobs[0].data
    assert prob.shape == (data.shape[0], 10)
    np.testing.assert_allclose(prob.sum(axis=1), 1.0, rtol=1e-5)
