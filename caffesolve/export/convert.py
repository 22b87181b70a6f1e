"""A built Net as an ONNX model, and the proof: onnxruntime against caffesolve.

`export_net` walks the Net's layers through the ONNX_OPS table (a type
without an entry is an ExportError naming the layer), gives every top an
ONNX name (the Caffe blob name, or '{blob}/{layer}' for the earlier writers
of an in-place blob), then asks ONNX's shape inference for every top's shape
and compares it with the Net's: a layer ONNX would size differently is an
error, not a wrong model. `compare_with_onnxruntime` runs both on the same
random inputs.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper, shape_inference

from caffesolve import __version__
from caffesolve.errors import ConfigError, ExportError
from caffesolve.export.graph import LayerIO, OnnxGraph
from caffesolve.export.onnx import NOT_EXPORTABLE, ONNX_OPS
from caffesolve.net import Net
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import atomic_write_bytes
from caffesolve.proto.upgrade import read_net_params_from_binary_file
from caffesolve.weights import is_hdf5

# Opset 22 is the first whose shape inference sizes pooling as Caffe does
# (the last window dropped when it would start in the padding).
MIN_OPSET = 22
DEFAULT_OPSET = 22
# onnxruntime against caffesolve: largest |difference| / largest |output|.
TOLERANCE = 1e-5


def max_opset() -> int:
    """The newest opset the installed onnx package knows."""
    return int(onnx.defs.onnx_opset_version())


def _top_names(net: Net) -> list[list[str]]:
    """The ONNX name of each layer's each top.

    A blob written by several layers (in place) has one ONNX tensor per
    write; the last write keeps the Caffe name (so outputs are named as in
    Caffe), except that a net input keeps it from its Input layer.
    """
    owner: dict[int, int] = {}
    for i, ids in enumerate(net.top_id_vecs):
        for b in ids:
            first_is_input = (
                b in owner and net.layers[owner[b]].layer_param.type == "Input"
            )
            if not first_is_input:
                owner[b] = i
    return [
        [
            net.blob_names[b] if owner[b] == i else f"{net.blob_names[b]}/{name}"
            for b in ids
        ]
        for i, (ids, name) in enumerate(zip(net.top_id_vecs, net.layer_names))
    ]


def export_net(
    net: Net, opset: int = DEFAULT_OPSET, dynamic_batch: bool = False
) -> onnx.ModelProto:
    """The ONNX model of `net` (built for TEST, weights loaded).

    Raises ExportError naming the first layer without an exact ONNX form.
    The IR version is the oldest that carries `opset` (onnxruntime reads it).
    """
    if not MIN_OPSET <= opset <= max_opset():
        raise ExportError(
            f"opset {opset} is not supported: use {MIN_OPSET} to {max_opset()} "
            f"(below {MIN_OPSET}, ONNX sizes Caffe's pooling differently)"
        )
    g = OnnxGraph(dynamic_batch)
    names = _top_names(net)
    for layer_names in names:
        for name in layer_names:
            g.reserve(name)
    current: dict[int, str] = {}  # blob id -> its ONNX tensor now
    written: list[tuple[LayerIO, list[str]]] = []
    for i, layer in enumerate(net.layers):
        io = LayerIO(
            layer,
            [current[b] for b in net.bottom_id_vecs[i]],
            names[i],
            net.bottom_vecs[i],
            net.top_vecs[i],
            net.source,
        )
        kind = layer.layer_param.type
        entry = ONNX_OPS.get(kind)
        if entry is None:
            why = NOT_EXPORTABLE.get(kind)
            if why is None:
                why = (
                    f"no exact ONNX form for {kind} layers (exportable: "
                    f"{', '.join(sorted(ONNX_OPS))})"
                )
            raise io.error(why)
        g.scope = layer.name
        tops = entry(g, io) or io.top
        written.append((io, tops))
        for b, name in zip(net.top_id_vecs[i], tops):
            current[b] = name
    for b in net.output_blob_indices:
        g.add_output(current[b], net.blobs[b].shape)
    graph = helper.make_graph(
        g.nodes, net.name or "net", g.inputs, g.outputs, g.initializers
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="caffesolve",
        producer_version=__version__,
    )
    model.ir_version = helper.find_min_ir_version_for(list(model.opset_import))
    _check_shapes(model, written, net.source)
    return model


def _check_shapes(
    model: onnx.ModelProto, written: list[tuple[LayerIO, list[str]]], source: str
) -> None:
    """Every top's shape by ONNX's shape inference must be the Net's.

    Inference runs on a probe: the same nodes, the weights as typed inputs
    (no data to copy), the outputs' sizes unknown, so that the first layer
    ONNX sizes differently is the one named.
    """
    g = model.graph
    weights = [t for t in g.initializer if t.data_type == onnx.TensorProto.FLOAT]
    small = [t for t in g.initializer if t.data_type != onnx.TensorProto.FLOAT]
    outputs = []
    for out in g.output:
        blank = onnx.ValueInfoProto()
        blank.CopyFrom(out)
        for dim in blank.type.tensor_type.shape.dim:
            dim.Clear()
        outputs.append(blank)
    as_inputs = [
        helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
        for t in weights
    ]
    probe = helper.make_model(
        helper.make_graph(
            g.node, g.name, [*g.input, *as_inputs], outputs, initializer=small
        ),
        opset_imports=model.opset_import,
    )
    probe.ir_version = model.ir_version
    by_layer = {io.name: io for io, _ in written}
    try:
        onnx.checker.check_model(probe)
        inferred = shape_inference.infer_shapes(probe, strict_mode=True)
    except (onnx.checker.ValidationError, shape_inference.InferenceError) as e:
        text = " ".join(str(e).split())
        node = re.search(r"node name: ([^,)]+)/", text)
        if node and node.group(1) in by_layer:
            raise by_layer[node.group(1)].error(f"ONNX rejects it: {text}") from None
        raise ExportError(f"{source}: the ONNX model does not check: {text}") from None
    shapes: dict[str, list[int | None]] = {}
    for info in [*inferred.graph.value_info, *inferred.graph.output]:
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = [
            d.dim_value if d.HasField("dim_value") else None for d in dims
        ]
    for io, tops in written:
        for name, blob in zip(tops, io.top_blobs):
            got = shapes.get(name)
            if got is None or name in io.bottom:
                continue
            same = len(got) == len(blob.shape) and all(
                d is None or d == c for d, c in zip(got, blob.shape)
            )
            if not same:
                shown = "x".join("?" if d is None else str(d) for d in got)
                caffe = "x".join(map(str, blob.shape))
                raise io.error(
                    f"ONNX sizes top '{blob.name}' {shown or 'scalar'}, Caffe "
                    f"{caffe or 'scalar'}: no exact ONNX form"
                )


# -- from files ----------------------------------------------------------------


def _layers_in_weights(path: str) -> set[str]:
    """The layer names a .caffemodel (or .caffemodel.h5) holds weights for."""
    if is_hdf5(path):
        import h5py

        with h5py.File(path, "r") as f:
            return set(f["data"]) if "data" in f else set()
    return {lp.name for lp in read_net_params_from_binary_file(path).layer}


def load_deploy_net(
    net_path: str | os.PathLike[str],
    weights: str | os.PathLike[str],
    batch: int | None = None,
) -> Net:
    """The TEST net of a deploy prototxt with every param blob from
    `weights`; `batch` resizes axis 0 of its inputs."""
    net = Net.from_prototxt(net_path, caffe_pb2.TEST, quiet=True)
    have = _layers_in_weights(str(weights))
    for name, layer in zip(net.layer_names, net.layers):
        if layer.blobs and name not in have:
            raise ConfigError(
                f"{weights}: no weights for layer '{name}' "
                f"({layer.layer_param.type}) of "
                f"{net_path}; an export needs every layer's trained weights"
            )
    net.copy_trained_layers_from(weights)
    if batch is not None:
        set_batch(net, batch)
    return net


def set_batch(net: Net, batch: int) -> None:
    """Resize axis 0 of every input and reshape the net."""
    for blob in net.input_blobs:
        blob.reshape((batch, *blob.shape[1:]))
    net.reshape()


def write_model(model: onnx.ModelProto, path: str | os.PathLike[str]) -> None:
    """Write the model atomically; a path that cannot be written is a
    ConfigError naming it."""
    try:
        atomic_write_bytes(path, model.SerializeToString())
    except OSError as e:
        raise ConfigError(f"{path}: cannot write the model ({e.strerror})") from None


# -- onnxruntime against caffesolve --------------------------------------------


@dataclass
class Difference:
    """One output's largest |onnxruntime - caffesolve|, absolute and relative
    to the largest |caffesolve output|."""

    output: str
    batch: int
    max_abs: float
    max_rel: float


def _difference(
    name: str,
    batch: int,
    theirs: npt.NDArray[np.float32],
    ours: npt.NDArray[np.float32],
) -> Difference:
    if theirs.shape != ours.shape:
        return Difference(name, batch, float("inf"), float("inf"))
    nan_ours, nan_theirs = np.isnan(ours), np.isnan(theirs)
    if not np.array_equal(nan_ours, nan_theirs):
        return Difference(name, batch, float("inf"), float("inf"))
    ok = ~nan_ours
    if not ok.any():
        return Difference(name, batch, 0.0, 0.0)
    diff = np.abs(theirs[ok].astype(np.float64) - ours[ok])
    scale = float(np.abs(ours[ok]).max())
    max_abs = float(diff.max())
    return Difference(name, batch, max_abs, max_abs / scale if scale else max_abs)


def compare_with_onnxruntime(
    net: Net, model: onnx.ModelProto, batch: int | None = None, seed: int = 1701
) -> list[Difference]:
    """Run caffesolve and onnxruntime on the same uniform [-1, 1) inputs (at
    `batch`, else the net's own); one Difference per output."""
    import onnxruntime as ort

    if batch is not None:
        set_batch(net, batch)
    rng = np.random.default_rng(seed)
    feeds = {}
    for info, blob in zip(model.graph.input, net.input_blobs):
        blob.data[...] = rng.uniform(-1, 1, blob.shape).astype(np.float32)
        feeds[info.name] = blob.data.copy()
    net.forward()
    ours = [net.blobs[b].data.copy() for b in net.output_blob_indices]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in model.graph.output]
    theirs = session.run(names, feeds)
    n = net.input_blobs[0].shape[0] if net.input_blobs else 1
    return [
        _difference(name, n, np.asarray(t), o)
        for name, t, o in zip(names, theirs, ours)
    ]
