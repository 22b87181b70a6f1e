"""ONNX export checked by onnxruntime: each Caffe layer type the exporter
knows, alone in a small deploy net with random weights, and LeNet and the
zoo nets whole; onnxruntime's outputs must be caffesolve's within 1e-5 of the
largest output. Then the errors: what has no exact ONNX form is refused by
name and nothing is written.

Tests of layer types that caffesolve does not register yet (the zoo layers)
skip with "layer type not registered yet" and run once they are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from export_helpers import (
    EXAMPLES,
    ROOT,
    assert_close,
    forward,
    missing_types,
    needs_layers,
    net_from_text,
    random_inputs,
    randomize,
    write_caffemodel,
)

from caffesolve.cli import cli
from caffesolve.errors import ExportError
from caffesolve.net import Net
from caffesolve.proto import caffe_pb2
from caffesolve.proto.upgrade import read_net_params_from_text_file

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from caffesolve.export.convert import export_net  # noqa: E402

REL = 1e-5


def run_onnx(model: onnx.ModelProto, inputs: list[np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    feeds = {i.name: x for i, x in zip(model.graph.input, inputs)}
    return session.run(None, feeds)


def net_text(body: str, shapes: list[tuple[int, ...]], tops: tuple[str, ...]) -> str:
    """An Input layer with one top per shape (x0, x1, ...), then the layer
    under test reading them all and writing `tops`."""
    dims = "".join(
        "shape { " + " ".join(f"dim: {d}" for d in s) + " } " for s in shapes
    )
    xs = [f"x{i}" for i in range(len(shapes))]
    return (
        'name: "t" layer { name: "in" type: "Input" '
        + " ".join(f'top: "{x}"' for x in xs)
        + f" input_param {{ {dims}}} }}\n"
        + 'layer { name: "l" '
        + " ".join(f'bottom: "{x}"' for x in xs)
        + " "
        + " ".join(f'top: "{t}"' for t in tops)
        + f" {body} }}"
    )


def check_layer(
    body: str,
    shapes: list[tuple[int, ...]],
    tops: tuple[str, ...] = ("y",),
    scale: float = 1.0,
    inputs: list[np.ndarray] | None = None,
) -> onnx.ModelProto:
    """Export a one-layer net; onnxruntime must give caffesolve's tops."""
    net = net_from_text(net_text(body, shapes, tops))
    model = export_net(net)
    xs = inputs if inputs is not None else random_inputs(net, scale=scale)
    ours = forward(net, xs)
    theirs = run_onnx(model, xs)
    assert len(theirs) == len(ours) == len(tops)
    for t, o in zip(theirs, ours):
        assert_close(t, o, REL)
    return model


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


# -- vision --------------------------------------------------------------------


@pytest.mark.parametrize(
    "pool, shape",
    [
        ("kernel_size: 3 stride: 2", (2, 3, 7, 7)),  # ceil: 3 windows
        ("kernel_size: 3 stride: 2", (2, 3, 8, 8)),  # ceil: a last partial window
        ("kernel_size: 2 stride: 2 pad: 1", (2, 3, 5, 5)),  # last window dropped
        ("kernel_size: 3 stride: 2 pad: 1", (2, 3, 6, 6)),  # kept
        ("kernel_size: 3 stride: 1 pad: 1", (1, 2, 5, 5)),
        (
            "kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0",
            (1, 2, 7, 6),
        ),
        ("kernel_size: 3 stride: 2 round_mode: FLOOR", (2, 3, 8, 8)),
        ("global_pooling: true", (2, 3, 5, 4)),
    ],
)
@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_pooling_matches_caffe_sizes_and_values(
    method: str, pool: str, shape: tuple[int, ...]
) -> None:
    model = check_layer(
        f'type: "Pooling" pooling_param {{ pool: {method} {pool} }}', [shape]
    )
    assert "Pad" not in ops(model)  # Caffe's pad lives on the pool itself
    node = model.graph.node[0]
    if "global" not in pool:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["ceil_mode"] == (0 if "FLOOR" in pool else 1)
        if method == "AVE":
            assert attrs["count_include_pad"] == 1


@pytest.mark.parametrize(
    "pool, shape",
    [
        ("kernel_size: 3 stride: 2", (2, 3, 8, 7)),  # ceil: partial windows
        ("global_pooling: true", (2, 3, 5, 4)),
    ],
)
def test_stochastic_pooling_exports_its_test_formula(
    pool: str, shape: tuple[int, ...]
) -> None:
    # A deploy net runs STOCHASTIC's TEST pass, sum(x^2) / sum(x) per window:
    # two AveragePools whose divisors cancel (Caffe's FLT_MIN aside).
    x = np.random.default_rng(5).uniform(0.1, 1.0, size=shape).astype(np.float32)
    model = check_layer(
        f'type: "Pooling" pooling_param {{ pool: STOCHASTIC {pool} }}',
        [shape],
        inputs=[x],
    )
    assert ops(model).count("AveragePool") == 2


def test_pooling_that_onnx_sizes_differently_is_refused() -> None:
    """Kernel 1, stride 3, no pad on 5 pixels: Caffe keeps a third window
    starting past the input (pad 0 turns its drop rule off), ONNX drops it."""
    net = net_from_text(
        net_text(
            'type: "Pooling" pooling_param { pool: MAX kernel_size: 1 stride: 3 }',
            [(1, 1, 5, 5)],
            ("y",),
        )
    )
    assert net.blob_by_name("y").shape == (1, 1, 3, 3)
    with pytest.raises(ExportError, match=r"layer 'l' \(Pooling\): ONNX sizes top 'y'"):
        export_net(net)


@pytest.mark.parametrize(
    "conv",
    [
        "num_output: 4 kernel_size: 3",
        "num_output: 4 kernel_size: 3 stride: 2 pad: 1 bias_term: false",
        "num_output: 6 kernel_h: 3 kernel_w: 2 stride_h: 1 stride_w: 2 "
        "pad_h: 2 pad_w: 0",
        "num_output: 4 kernel_size: 3 group: 2 dilation: 2 pad: 2",
    ],
)
def test_convolution(conv: str) -> None:
    check_layer(f'type: "Convolution" convolution_param {{ {conv} }}', [(2, 4, 9, 8)])


@needs_layers("Deconvolution")
@pytest.mark.parametrize(
    "conv",
    [
        "num_output: 3 kernel_size: 4 stride: 2 pad: 1",
        "num_output: 4 kernel_size: 3 stride: 3 group: 2 bias_term: false",
        "num_output: 2 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 dilation: 2",
    ],
)
def test_deconvolution_output_size(conv: str) -> None:
    check_layer(f'type: "Deconvolution" convolution_param {{ {conv} }}', [(2, 4, 5, 6)])


@needs_layers("LRN")
@pytest.mark.parametrize(
    "lrn",
    [
        "local_size: 5 alpha: 0.0001 beta: 0.75",
        "local_size: 3 alpha: 2 beta: 0.5 k: 3",
        "local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL",
    ],
)
def test_lrn(lrn: str) -> None:
    model = check_layer(f'type: "LRN" lrn_param {{ {lrn} }}', [(2, 7, 5, 5)], scale=3)
    assert ("LRN" in ops(model)) == ("WITHIN" not in lrn)


# -- inner product and the affine family ---------------------------------------


@pytest.mark.parametrize(
    "ip, shape",
    [
        ("num_output: 5", (3, 2, 4, 4)),
        ("num_output: 5 bias_term: false", (3, 7)),
        ("num_output: 5 transpose: true", (3, 2, 3)),
        ("num_output: 5 axis: 2", (2, 3, 4, 5)),
        ("num_output: 5 axis: -1 bias_term: false", (2, 3, 4)),
        ("num_output: 5 axis: 0", (2, 3)),
    ],
)
def test_inner_product_axis(ip: str, shape: tuple[int, ...]) -> None:
    check_layer(f'type: "InnerProduct" inner_product_param {{ {ip} }}', [shape])


@needs_layers("BatchNorm")
@pytest.mark.parametrize(
    "bn, shape",
    [
        ("", (2, 3, 4, 5)),
        ("batch_norm_param { eps: 0.001 }", (4, 6)),
        ("batch_norm_param { use_global_stats: false }", (3, 2, 4, 4)),
    ],
)
def test_batch_norm_uses_the_scale_factor_blob(bn: str, shape: tuple[int, ...]) -> None:
    check_layer(f'type: "BatchNorm" {bn}', [shape])


@needs_layers("Scale")
@pytest.mark.parametrize(
    "sp, shapes",
    [
        ("bias_term: true", [(2, 3, 4, 5)]),
        ("axis: 0 num_axes: 2", [(2, 3, 4, 5)]),
        ("num_axes: 0 bias_term: true", [(2, 3, 4)]),
        ("axis: 1 bias_term: true", [(2, 3, 4, 5), (3, 4)]),  # scale from bottom[1]
    ],
)
def test_scale(sp: str, shapes: list[tuple[int, ...]]) -> None:
    check_layer(f'type: "Scale" scale_param {{ {sp} }}', shapes)


@needs_layers("Bias")
@pytest.mark.parametrize(
    "bp, shapes", [("", [(2, 3, 4)]), ("axis: 0", [(2, 3, 4), (2, 3)])]
)
def test_bias(bp: str, shapes: list[tuple[int, ...]]) -> None:
    check_layer(f'type: "Bias" bias_param {{ {bp} }}', shapes)


@needs_layers("PReLU")
@pytest.mark.parametrize("shared", ["false", "true"])
def test_prelu_channel_shared(shared: str) -> None:
    check_layer(
        f'type: "PReLU" prelu_param {{ channel_shared: {shared} }}', [(2, 3, 4, 4)]
    )


# -- neurons -------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, scale",
    [
        ('type: "ReLU"', 1),
        ('type: "ReLU" relu_param { negative_slope: 0.1 }', 1),
        ('type: "Sigmoid"', 4),
        ('type: "TanH"', 4),
        ('type: "AbsVal"', 1),
        ('type: "Dropout" dropout_param { dropout_ratio: 0.3 }', 1),
        ('type: "ELU" elu_param { alpha: 0.5 }', 3),
        ('type: "BNLL"', 60),
        ('type: "Power" power_param { power: 2 scale: 0.5 shift: 1 }', 2),
        ('type: "Power" power_param { power: 3 }', 2),
        ('type: "Power" power_param { scale: -2 shift: 0.5 }', 2),
        ('type: "Power"', 2),
        ('type: "Exp" exp_param { base: 2 scale: 0.5 shift: 1 }', 3),
        ('type: "Exp"', 3),
        ('type: "Swish" swish_param { beta: 1.5 }', 4),
        ('type: "Swish"', 4),
        ('type: "Clip" clip_param { min: -0.3 max: 0.6 }', 1),
        ('type: "Threshold" threshold_param { threshold: 0.1 }', 1),
    ],
)
def test_neuron(body: str, scale: float) -> None:
    check_layer(body, [(2, 3, 4, 5)], scale=scale)


@pytest.mark.parametrize(
    "log", ["", "base: 10 scale: 2 shift: 3", "base: 2 shift: 0.5"]
)
def test_log(log: str) -> None:
    x = np.random.default_rng(3).uniform(0.5, 4, (2, 3, 4)).astype(np.float32)
    check_layer(f'type: "Log" log_param {{ {log} }}', [x.shape], inputs=[x])


# -- Softmax, Eltwise, Concat, the shape layers --------------------------------


@pytest.mark.parametrize("axis", [1, 2, -1, 0])
def test_softmax_axis(axis: int) -> None:
    model = check_layer(
        f'type: "Softmax" softmax_param {{ axis: {axis} }}', [(2, 3, 4, 5)], scale=5
    )
    attrs = model.graph.node[0].attribute
    assert onnx.helper.get_attribute_value(attrs[0]) == axis % 4


@pytest.mark.parametrize(
    "eltwise, n",
    [
        ("operation: SUM", 2),
        ("operation: SUM coeff: 0.5 coeff: -2 coeff: 1", 3),
        ("operation: PROD", 3),
        ("operation: MAX", 3),
    ],
)
def test_eltwise_coefficients(eltwise: str, n: int) -> None:
    check_layer(f'type: "Eltwise" eltwise_param {{ {eltwise} }}', [(2, 3, 4)] * n)


@pytest.mark.parametrize(
    "concat, shapes",
    [
        ("", [(2, 3, 4), (2, 5, 4)]),
        ("axis: 2", [(2, 3, 4), (2, 3, 1), (2, 3, 2)]),
        ("axis: -1", [(2, 3), (2, 2)]),
        ("concat_dim: 0", [(2, 3), (4, 3)]),
    ],
)
def test_concat(concat: str, shapes: list[tuple[int, ...]]) -> None:
    check_layer(f'type: "Concat" concat_param {{ {concat} }}', shapes)


@pytest.mark.parametrize(
    "body, shape",
    [
        ('type: "Flatten"', (2, 3, 4, 5)),
        ('type: "Flatten" flatten_param { axis: 2 }', (2, 3, 4, 5)),
        ('type: "Flatten" flatten_param { axis: 1 end_axis: 2 }', (2, 3, 4, 5)),
        (
            'type: "Reshape" reshape_param { shape { dim: 0 dim: -1 dim: 2 } }',
            (2, 3, 4),
        ),
        (
            'type: "Reshape" reshape_param '
            "{ shape { dim: 2 dim: 2 } axis: 1 num_axes: 1 }",
            (3, 4, 5),
        ),
        ('type: "Reshape" reshape_param { shape { dim: -1 } }', (2, 3, 4)),
    ],
)
def test_flatten_and_reshape(body: str, shape: tuple[int, ...]) -> None:
    check_layer(body, [shape])


@needs_layers("Slice")
@pytest.mark.parametrize(
    "slice_, tops",
    [("", ("a", "b", "c")), ("axis: 2 slice_point: 1 slice_point: 4", ("a", "b", "c"))],
)
def test_slice(slice_: str, tops: tuple[str, ...]) -> None:
    check_layer(f'type: "Slice" slice_param {{ {slice_} }}', [(2, 6, 5)], tops=tops)


@needs_layers("Crop")
@pytest.mark.parametrize(
    "crop, shapes",
    [
        ("offset: 1", [(2, 3, 7, 7), (2, 3, 4, 5)]),
        ("axis: 1 offset: 0 offset: 2 offset: 1", [(2, 3, 7, 7), (1, 2, 4, 5)]),
        ("axis: 3", [(2, 3, 7, 7), (1, 1, 1, 5)]),
    ],
)
def test_crop_offsets(crop: str, shapes: list[tuple[int, ...]]) -> None:
    check_layer(f'type: "Crop" crop_param {{ {crop} }}', shapes)


@needs_layers("ArgMax")
@pytest.mark.parametrize(
    "argmax",
    [
        "",
        "top_k: 3",
        "top_k: 2 out_max_val: true",
        "axis: 1 top_k: 2",
        "axis: 2 out_max_val: true",
    ],
)
def test_argmax(argmax: str) -> None:
    check_layer(f'type: "ArgMax" argmax_param {{ {argmax} }}', [(2, 4, 3, 2)])


@needs_layers("ArgMax")
def test_argmax_ties_go_to_the_larger_index_as_in_caffe() -> None:
    x = np.zeros((2, 6), np.float32)
    x[:, [1, 4]] = 1.0
    check_layer('type: "ArgMax" argmax_param { top_k: 2 }', [x.shape], inputs=[x])


@needs_layers("Tile")
def test_tile() -> None:
    check_layer('type: "Tile" tile_param { axis: 1 tiles: 3 }', [(2, 3, 4)])


@needs_layers("Reduction")
@pytest.mark.parametrize(
    "op", ["SUM", "ASUM coeff: -2", "SUMSQ axis: 1", "MEAN axis: 2 coeff: 0.5"]
)
def test_reduction(op: str) -> None:
    check_layer(f'type: "Reduction" reduction_param {{ operation: {op} }}', [(2, 3, 4)])


@needs_layers("MVN")
@pytest.mark.parametrize(
    "mvn", ["", "across_channels: true", "normalize_variance: false"]
)
def test_mvn(mvn: str) -> None:
    check_layer(f'type: "MVN" mvn_param {{ {mvn} }}', [(2, 3, 4, 5)])


@needs_layers("Embed")
def test_embed() -> None:
    x = np.array([[0, 3, 2], [4, 4, 1]], np.float32)
    check_layer(
        'type: "Embed" embed_param { num_output: 3 input_dim: 5 }',
        [x.shape],
        inputs=[x],
    )


# -- whole nets ----------------------------------------------------------------

SHARED_AND_IN_PLACE = """name: "branches"
layer { name: "data" type: "Input" top: "data"
  input_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "sig" type: "Sigmoid" bottom: "conv" top: "sig" }
layer { name: "tanh" type: "TanH" bottom: "conv" top: "tanh" }
layer { name: "sum" type: "Eltwise" bottom: "sig" bottom: "tanh" bottom: "conv"
  top: "sum"
  eltwise_param { coeff: 1 coeff: -1 coeff: 0.5 } }
layer { name: "drop" type: "Dropout" bottom: "sum" top: "sum" }
layer { name: "pool" type: "Pooling" bottom: "sum" top: "pool"
  pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
"""


def test_split_and_in_place_layers_keep_caffe_names() -> None:
    net = net_from_text(SHARED_AND_IN_PLACE)
    assert any(layer.layer_param.type == "Split" for layer in net.layers)
    model = export_net(net)
    assert [o.name for o in model.graph.output] == ["pool"]
    assert [i.name for i in model.graph.input] == ["data"]
    xs = random_inputs(net)
    assert_close(run_onnx(model, xs)[0], forward(net, xs)[0], REL)


def lenet(batch: int | None = None) -> Net:
    net = Net.from_prototxt(ROOT / "configs/lenet.prototxt", caffe_pb2.TEST, quiet=True)
    randomize(net, seed=5)
    return net


def test_lenet_through_the_cli(tmp_path: Path) -> None:
    """`caffesolve export` on LeNet: the file onnxruntime loads gives our
    outputs; the IR version is set, the opset is 22."""
    net = lenet()
    weights = write_caffemodel(net, tmp_path / "lenet.caffemodel")
    out = tmp_path / "lenet.onnx"
    result = CliRunner().invoke(
        cli,
        [
            "export",
            str(ROOT / "configs/lenet.prototxt"),
            str(weights),
            "-o",
            str(out),
            "--batch",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    model = onnx.load(out)
    assert model.opset_import[0].version == 22
    assert model.ir_version == onnx.helper.find_min_ir_version_for(model.opset_import)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 3
    x = np.random.default_rng(2).uniform(0, 1, (3, 1, 28, 28)).astype(np.float32)
    assert_close(run_onnx(model, [x])[0], forward(net, [x])[0], REL)


def test_dynamic_batch_and_check(tmp_path: Path) -> None:
    net = lenet()
    weights = write_caffemodel(net, tmp_path / "lenet.caffemodel")
    out = tmp_path / "lenet.onnx"
    args = [
        "export",
        str(ROOT / "configs/lenet.prototxt"),
        str(weights),
        "-o",
        str(out),
    ]
    result = CliRunner().invoke(
        cli, [*args, "--batch", "dynamic", "--check", "--opset", "23"]
    )
    assert result.exit_code == 0, result.output
    assert "onnxruntime vs caffesolve: largest difference" in result.output
    model = onnx.load(out)
    assert model.opset_import[0].version == 23
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    for n in (1, 5):
        x = np.random.default_rng(n).uniform(0, 1, (n, 1, 28, 28)).astype(np.float32)
        assert_close(run_onnx(model, [x])[0], forward(net, [x])[0], REL)


ZOO = {
    # net: an input size small enough for a quick test, yet valid for every
    # layer; the 7x7 average pools that end GoogLeNet and ResNet-50 (global
    # at 224) are made global, so that those two run at 96
    "alexnet": 67,
    "vgg16": 32,
    "squeezenet_v1_1": 64,
    "googlenet": 96,
    "resnet50": 96,
    "mobilenet_v1": 64,
}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_net(name: str) -> None:
    path = EXAMPLES / f"zoo__{name}_deploy.prototxt"
    if not path.exists():
        pytest.skip(f"{path} not here")
    param = read_net_params_from_text_file(path)
    missing = missing_types(param)
    if missing:
        pytest.skip(f"layer type not registered yet: {', '.join(missing)}")
    size = ZOO[name]
    for lp in param.layer:
        if lp.type == "Input":
            for shape in lp.input_param.shape:
                shape.dim[:] = [1, shape.dim[1], size, size]
        if lp.type == "InnerProduct":  # VGG's 4096-wide layers: 64 will do
            lp.inner_product_param.num_output = 64
        pool = lp.pooling_param
        if lp.type == "Pooling" and pool.pool == pool.AVE and pool.kernel_size == 7:
            pool.ClearField("kernel_size")
            pool.ClearField("stride")
            pool.global_pooling = True
    net = Net(param, caffe_pb2.TEST, quiet=True, source=str(path))
    randomize(net, seed=11)
    for layer in net.layers:  # weights at the fillers' scale keep values moderate
        for b in layer.blobs[:1]:
            fan_in = max(int(np.prod(b.shape[1:])), 1)
            b.data *= np.float32(1 / np.sqrt(fan_in))
    model = export_net(net)
    xs = random_inputs(net)
    for theirs, ours in zip(run_onnx(model, xs), forward(net, xs)):
        assert_close(theirs, ours, REL)


# -- what cannot be exported ---------------------------------------------------


def test_data_layer_is_refused_by_name_and_nothing_written(tmp_path: Path) -> None:
    import h5py

    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["data"] = np.zeros((2, 3, 6, 6), np.float32)
    (tmp_path / "list.txt").write_text(str(tmp_path / "d.h5") + "\n")
    input_layer = SHARED_AND_IN_PLACE.splitlines()[1:3]
    text = SHARED_AND_IN_PLACE.replace(
        "\n".join(input_layer),
        'layer { name: "data" '
        f'type: "HDF5Data" top: "data" hdf5_data_param {{ '
        f'source: "{tmp_path}/list.txt" batch_size: 2 }} }}',
    )
    prototxt = tmp_path / "train.prototxt"
    prototxt.write_text(text)
    net = net_from_text(text)
    weights = write_caffemodel(net, tmp_path / "w.caffemodel")
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(
        cli, ["export", str(prototxt), str(weights), "-o", str(out)]
    )
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert (
        f"{prototxt}: layer 'data' (HDF5Data): reads its input itself" in result.output
    )
    assert not out.exists()


def test_loss_layer_is_refused_by_name() -> None:
    text = SHARED_AND_IN_PLACE + (
        'layer { name: "label" type: "Input" top: "label"\n'
        "  input_param { shape { dim: 2 } } }\n"
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "pool" bottom: "label"\n'
        '  top: "loss" }'
    )
    text = text.replace(
        "pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }",
        "pooling_param { pool: AVE global_pooling: true }",
    )
    net = net_from_text(text)
    with pytest.raises(ExportError) as e:
        export_net(net)
    assert str(e.value).startswith(
        "test.prototxt: layer 'loss' (SoftmaxWithLoss): is a training loss"
    )


def test_opset_below_22_is_refused(tmp_path: Path) -> None:
    weights = write_caffemodel(lenet(), tmp_path / "w.caffemodel")
    out = tmp_path / "m.onnx"
    args = [
        "export",
        str(ROOT / "configs/lenet.prototxt"),
        str(weights),
        "-o",
        str(out),
    ]
    result = CliRunner().invoke(cli, [*args, "--opset", "18"])
    assert result.exit_code == 1
    assert "opset 18 is not supported: use 22 to" in result.output
    assert not out.exists()


def test_weights_missing_a_layer_is_refused(tmp_path: Path) -> None:
    net = lenet()
    param = net.to_proto()
    del param.layer[-2]  # ip2
    path = tmp_path / "partial.caffemodel"
    path.write_bytes(param.SerializeToString())
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(
        cli, ["export", str(ROOT / "configs/lenet.prototxt"), str(path), "-o", str(out)]
    )
    assert result.exit_code == 1
    assert "no weights for layer 'ip2' (InnerProduct)" in result.output
    assert not out.exists()


def test_bad_batch_is_a_usage_error(tmp_path: Path) -> None:
    weights = write_caffemodel(lenet(), tmp_path / "w.caffemodel")
    args = [
        "export",
        str(ROOT / "configs/lenet.prototxt"),
        str(weights),
        "-o",
        str(tmp_path / "m.onnx"),
    ]
    result = CliRunner().invoke(cli, [*args, "--batch", "many"])
    assert result.exit_code == 2
    assert "neither a positive batch size nor 'dynamic'" in result.output


def test_readme_lists_what_cannot_be_exported() -> None:
    from caffesolve.export.onnx import NOT_EXPORTABLE

    readme = (ROOT / "README.md").read_text()
    for t in NOT_EXPORTABLE:
        assert f"`{t}`" in readme, t


def test_unwritable_output_is_one_line(tmp_path: Path) -> None:
    weights = write_caffemodel(lenet(), tmp_path / "w.caffemodel")
    out = tmp_path / "missing" / "m.onnx"
    args = [
        "export",
        str(ROOT / "configs/lenet.prototxt"),
        str(weights),
        "-o",
        str(out),
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    assert f"{out}: cannot write the model (No such file or directory)" in result.output
