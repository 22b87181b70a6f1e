"""The schema: bindings agree with proto/caffe.proto; binary round trips."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from caffesolve.blob import Blob
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import read_binaryproto, write_binaryproto

ROOT = Path(__file__).resolve().parents[1]


def test_committed_bindings_match_proto(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    shutil.copy(ROOT / "proto" / "caffe.proto", tmp_path / "caffe.proto")
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"--proto_path={tmp_path}",
         f"--python_out={tmp_path}", str(tmp_path / "caffe.proto")],
        check=True,
    )  # fmt: skip
    fresh = (tmp_path / "caffe_pb2.py").read_text()
    committed = (ROOT / "caffesolve" / "proto" / "caffe_pb2.py").read_text()
    assert fresh == committed, "run scripts/gen_proto.sh and commit the result"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def test_field_numbers_are_caffes_on_the_wire() -> None:
    # Hand-assembled wire bytes with Caffe's numbers: SolverState.iter = 1,
    # current_step = 4; Datum.channels = 1, label = 5, data = 4 (bytes).
    state = caffe_pb2.SolverState(iter=300, current_step=2, learned_net="a")
    expected = b"\x08" + _varint(300) + b"\x12\x01a" + b"\x20\x02"
    assert state.SerializeToString() == expected
    datum = caffe_pb2.Datum(channels=1, height=2, width=2, data=b"\x01\x02\x03\x04",
                            label=7)  # fmt: skip
    wire = b"\x08\x01\x10\x02\x18\x02\x22\x04\x01\x02\x03\x04\x28\x07"
    assert datum.SerializeToString() == wire
    # BlobProto.data: packed field 5; shape: field 7 holding packed dim (1).
    blob = caffe_pb2.BlobProto(data=[1.0])
    blob.shape.dim.append(1)
    assert blob.SerializeToString() == (
        b"\x2a\x04" + np.float32(1.0).tobytes() + b"\x3a\x03\x0a\x01\x01"
    )


def test_solver_defaults_are_caffes() -> None:
    p = caffe_pb2.SolverParameter()
    assert (p.average_loss, p.test_interval, p.iter_size) == (1, 0, 1)
    assert p.test_initialization is True
    assert p.clip_gradients == -1 and p.regularization_type == "L2"
    assert p.type == "SGD" and p.random_seed == -1 and p.snapshot_after_train
    assert p.solver_mode == caffe_pb2.SolverParameter.GPU
    assert np.float32(p.delta) == np.float32(1e-8)
    assert np.float32(p.momentum2) == np.float32(0.999)
    assert np.float32(p.rms_decay) == np.float32(0.99)
    assert caffe_pb2.ParamSpec().lr_mult == 1 and caffe_pb2.ParamSpec().decay_mult == 1


def test_solverstate_round_trip_is_byte_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(1701)
    state = caffe_pb2.SolverState(iter=5000, current_step=3,
                                  learned_net="lenet_iter_5000.caffemodel")  # fmt: skip
    for shape in [(20, 1, 5, 5), (20,), (500, 800)]:
        b = Blob(shape)
        b.data[...] = rng.standard_normal(shape)
        state.history.append(b.to_proto())
    path = tmp_path / "s.solverstate"
    write_binaryproto(path, state)
    raw = path.read_bytes()
    back = read_binaryproto(path, caffe_pb2.SolverState())
    assert back == state
    assert back.SerializeToString() == raw
    restored = Blob()
    restored.from_proto(back.history[2])
    assert (
        restored.data.tobytes()
        == np.asarray(state.history[2].data, np.float32).reshape(500, 800).tobytes()
    )


def test_netparameter_with_blobs_round_trip(tmp_path: Path) -> None:
    net = text_format.Parse(
        'name: "n" layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" '
        "inner_product_param { num_output: 3 } }",
        caffe_pb2.NetParameter(),
    )
    w = Blob((3, 4))
    w.data[...] = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    net.layer[0].blobs.append(w.to_proto())
    path = tmp_path / "n.caffemodel"
    write_binaryproto(path, net)
    back = read_binaryproto(path, caffe_pb2.NetParameter())
    assert back.SerializeToString() == path.read_bytes() == net.SerializeToString()
    b = Blob()
    b.from_proto(back.layer[0].blobs[0])
    assert b.data.tobytes() == w.data.tobytes()


def test_legacy_4d_blob_shape_loads() -> None:
    proto = caffe_pb2.BlobProto(num=2, channels=1, height=1, width=3,
                                data=[1, 2, 3, 4, 5, 6])  # fmt: skip
    b = Blob()
    b.from_proto(proto)
    assert b.shape == (2, 1, 1, 3)
    fixed = Blob((2, 3))
    with pytest.raises(Exception, match="does not match"):
        fixed.from_proto(proto, reshape=False)
    target = Blob((1, 3))
    target.from_proto(caffe_pb2.BlobProto(num=1, channels=1, height=1, width=3,
                                          data=[7, 8, 9]), reshape=False)  # fmt: skip
    assert target.data.tolist() == [[7, 8, 9]]
