"""Small nets, data and launchers for the data-parallel tests (test_parallel.py).

Two tiny nets train in a few milliseconds an iteration: a convolutional one on
an LMDB of 1x6x6 Datums, and one on HDF5 rows whose two InnerProducts share
their params by name. `solver_files` writes a solver and its net for a batch
size; `run_mpi` starts tests/mpi_driver.py (or the CLI) under mpirun.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from caffesolve.data.lmdb_source import write_datum_lmdb

TESTS = Path(__file__).resolve().parent
DRIVER = TESTS / "mpi_driver.py"
MPIRUN = shutil.which("mpirun")
# CI runs as root on a 2-core machine: N ranks may be more than the cores.
MPIRUN_FLAGS = ["--allow-run-as-root", "--oversubscribe"]
RECORDS = 53  # not a multiple of any run of N x batch: the cursor wraps mid-run
ROWS = 41


def require_mpi() -> None:
    """Skip without mpirun and mpi4py, except in CI (.ci/run installs both
    and sets CAFFESOLVE_REQUIRE_MPI): there, fail."""
    missing = []
    if MPIRUN is None:
        missing.append("mpirun (apt-get install openmpi-bin libopenmpi-dev)")
    if importlib.util.find_spec("mpi4py") is None:
        missing.append("mpi4py (pip install 'caffesolve[mpi]')")
    if missing:
        if os.environ.get("CAFFESOLVE_REQUIRE_MPI") or os.environ.get("CI"):
            pytest.fail(f"{' and '.join(missing)} missing: .ci/run installs them")
        pytest.skip(f"needs {' and '.join(missing)}")


def make_lmdb(path: Path, records: int = RECORDS, seed: int = 3) -> Path:
    """An LMDB of `records` 1x6x6 uint8 Datums with labels 0..2."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(records, 6, 6), dtype=np.uint8)
    labels = rng.integers(0, 3, size=records, dtype=np.uint8)
    write_datum_lmdb(path, images, labels)
    return path


def make_hdf5(folder: Path, rows: int = ROWS, seed: int = 5) -> Path:
    """Two .h5 files (data: rows x 8 float, label: 0..2) and the list file."""
    import h5py

    rng = np.random.default_rng(seed)
    names = []
    for k, n in enumerate((rows // 2, rows - rows // 2)):
        data = rng.normal(size=(n, 8)).astype(np.float32)
        label = (np.abs(data[:, 0]) * 2).astype(np.int64).clip(0, 2)
        name = folder / f"part{k}.h5"
        with h5py.File(name, "w") as f:
            f["data"] = data
            f["label"] = label.astype(np.float32)
        names.append(str(name))
    listing = folder / "list.txt"
    listing.write_text("\n".join(names) + "\n")
    return listing


def lmdb_net(source: Path, batch: int, test: bool = False, fault: bool = False) -> str:
    """Data (LMDB) -> Convolution -> ReLU -> Pooling -> InnerProduct -> loss;
    `test`: a TEST-phase Data layer and Accuracy too; `fault`: mpi_driver's
    TestFault layer after the data (it acts as CAFFESOLVE_TEST_FAULT says)."""
    data = """
layer {{ name: "data" type: "Data" top: "data" top: "label"
  include {{ phase: {phase} }}
  transform_param {{ scale: 0.00390625 }}
  data_param {{ source: "{source}" batch_size: {batch} backend: LMDB }} }}"""
    text = 'name: "TinyConv"' + data.format(phase="TRAIN", source=source, batch=batch)
    if test:
        text += data.format(phase="TEST", source=source, batch=10)
    if fault:
        text += """
layer { name: "fault" type: "TestFault" bottom: "data" top: "data" }"""
    text += """
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3
    weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""
    if test:
        text += """layer { name: "accuracy" type: "Accuracy" bottom: "ip"
  bottom: "label" top: "accuracy" include { phase: TEST } }
"""
    return text


def hdf5_net(listing: Path, batch: int) -> str:
    """HDF5Data -> ip1 -> ReLU -> ip2 (ip1's params, shared by name) -> ip3 -> loss."""
    shared = 'param { name: "w" } param { name: "b" }'
    filler = 'weight_filler { type: "gaussian" std: 0.3 }'
    return f"""name: "TinyShared"
layer {{ name: "data" type: "HDF5Data" top: "data" top: "label"
  hdf5_data_param {{ source: "{listing}" batch_size: {batch} shuffle: true }} }}
layer {{ name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1" {shared}
  inner_product_param {{ num_output: 8 {filler} }} }}
layer {{ name: "relu" type: "ReLU" bottom: "ip1" top: "ip1" }}
layer {{ name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2" {shared}
  inner_product_param {{ num_output: 8 {filler} }} }}
layer {{ name: "ip3" type: "InnerProduct" bottom: "ip2" top: "ip3"
  inner_product_param {{ num_output: 3 {filler} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip3" bottom: "label"
  top: "loss" }}
"""


# The equivalence runs: (name, solver type, data, layer_wise_reduce, extra).
# Every solver type meets both reductions; each reduction both data layers.
CONFIGS = [
    ("sgd_lmdb_layerwise", "SGD", "lmdb", True, 'lr_policy: "fixed" iter_size: 2'),
    ("sgd_hdf5_flat", "SGD", "hdf5", False, 'lr_policy: "step" stepsize: 7'),
    ("adam_lmdb_flat", "Adam", "lmdb", False, 'lr_policy: "fixed"'),
    ("adam_hdf5_layerwise", "Adam", "hdf5", True, 'lr_policy: "fixed"'),
]
ITERATIONS = 20


def solver_files(
    folder: Path,
    solver_type: str,
    data: str,
    layer_wise: bool,
    batch: int,
    extra: str = 'lr_policy: "fixed"',
    data_path: Path | None = None,
    net: str | None = None,
) -> Path:
    """Write folder/solver.prototxt and folder/net.prototxt (`net`, or the
    LMDB or HDF5 net on the data in folder's parent); the solver path.
    `extra` adds solver fields (it must set lr_policy)."""
    folder.mkdir(parents=True, exist_ok=True)
    if net is not None:
        pass
    elif data == "lmdb":
        net = lmdb_net(data_path or folder.parent / "db", batch)
    else:
        net = hdf5_net(data_path or folder.parent / "h5" / "list.txt", batch)
    (folder / "net.prototxt").write_text(net)
    rate = "base_lr: 0.01 momentum2: 0.999" if solver_type == "Adam" else "base_lr: 0.1"
    solver = folder / "solver.prototxt"
    solver.write_text(
        f'net: "{folder / "net.prototxt"}"\n'
        f'type: "{solver_type}" {rate} momentum: 0.9 weight_decay: 0.0005\n'
        f"gamma: 0.5 max_iter: {ITERATIONS} display: 5\n"
        f"layer_wise_reduce: {str(layer_wise).lower()} random_seed: 1701\n"
        f'snapshot_after_train: false snapshot_prefix: "{folder / "snap"}"\n'
        f"{extra}\n"
    )
    return solver


def run_mpi(
    n: int | list[tuple[int, list[str]]],
    args: list[str],
    timeout: float = 120,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """`mpirun -n n python tests/mpi_driver.py ARGS`, or an MPMD launch when
    `n` is [(ranks, extra mpirun args), ...] (one app context each)."""
    assert MPIRUN is not None
    command = [MPIRUN, *MPIRUN_FLAGS]
    contexts = [(n, [])] if isinstance(n, int) else n
    for k, (ranks, extra) in enumerate(contexts):
        if k:
            command.append(":")
        command += ["-n", str(ranks), *extra, sys.executable, str(DRIVER), *args]
    env = dict(os.environ)
    env.setdefault("CAFFESOLVE_THREADS", "1")
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
    )
