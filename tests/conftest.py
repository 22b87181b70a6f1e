"""Shared test helpers: layer construction, the CLI runner, a quiet log, the
paths of ../shared (Caffe's example prototxts, the MNIST test digits), and
C++ reference programs compiled as Caffe is.

Plain functions and constants are imported by the test modules
(`from conftest import layer_from`); fixtures are found by pytest. `disk`
(a small filesystem of its own) is for the fault tests (fault_helpers.py).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from caffesolve.blob import Blob
from caffesolve.cli import cli
from caffesolve.layers import Layer, create_layer
from caffesolve.log import LOG
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import parse_prototxt_text

SHARED = Path(__file__).resolve().parents[2] / "shared"
EXAMPLES = SHARED / "caffe-examples"  # Caffe's example and zoo prototxts
MNIST_T10K = SHARED / "data" / "mnist-t10k"  # real MNIST test digits

SEED = 1701  # Caffe's test seed


def rng(seed: int = SEED) -> np.random.Generator:
    return np.random.default_rng(seed)


def layer_from(text: str, phase: int = caffe_pb2.TRAIN, seed: int = SEED) -> Layer:
    """A layer built from its LayerParameter text, with its own seeded rng."""
    param = parse_prototxt_text(text, caffe_pb2.LayerParameter(), "<test>")
    return create_layer(param, phase, rng(seed))


def forward_backward(
    text: str, x: np.ndarray, dy: np.ndarray, in_place: bool = False, **kw: int
) -> tuple[np.ndarray, np.ndarray]:
    """The layer `text` on a bottom holding x (its top the bottom itself when
    in_place): forward, then backward from top diff dy, once; (top data,
    bottom diff). `kw` goes to layer_from (phase, seed)."""
    layer = layer_from(text, **kw)
    bottom = Blob(x.shape, dtype=x.dtype)
    bottom.data[...] = x
    top = bottom if in_place else Blob(dtype=x.dtype)
    layer.setup([bottom], [top])
    layer.forward([bottom], [top])
    y = top.data.copy()
    top.diff[...] = dy
    layer.backward([top], [True], [bottom])
    return y, bottom.diff.copy()


def run_cli(*args: str) -> tuple[int, str, str]:
    """`caffesolve ARGS` in-process: (exit code, stdout, stderr)."""
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def varint(v: int) -> bytes:
    """A protobuf varint, for wire bytes assembled by hand in the tests."""
    out = b""
    while True:
        b, v = v & 0x7F, v >> 7
        out += bytes([b | (0x80 if v else 0)])
        if not v:
            return out


@pytest.fixture
def quiet_log() -> Iterator[None]:
    """Silence the glog stream for the test (restored afterwards)."""
    LOG.quiet = True
    yield
    LOG.quiet = False


@pytest.fixture
def disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """`disk(size)`: a folder on a filesystem of `size` bytes of its own
    (fault_helpers.Disk: a tmpfs where mounting is allowed), unmounted after."""
    from fault_helpers import Disk

    made: list[Disk] = []

    def make(size: int, name: str = "disk") -> Disk:
        d = Disk(tmp_path / name, size, monkeypatch)
        made.append(d)
        return d

    yield make
    for d in made:
        d.unmount()


def compile_cpp(
    tmp_path_factory: pytest.TempPathFactory, source: str, name: str
) -> Path:
    """`source` built with g++ -O2 -std=c++11 (Caffe's Makefile flags): the
    path of the program. Skips the test when there is no g++."""
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("no C++ compiler")
    folder = tmp_path_factory.mktemp("cpp")
    (folder / f"{name}.cpp").write_text(source)
    exe = folder / name
    subprocess.run(
        [compiler, "-O2", "-std=c++11", "-o", str(exe), str(folder / f"{name}.cpp")],
        check=True,
        capture_output=True,
    )
    return exe
