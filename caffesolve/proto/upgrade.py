"""Upgrading old net definitions to today's NetParameter (upgrade_proto.cpp).

Caffe reads three generations of net files and upgrades the older two when it
reads them, text or binary (.caffemodel) alike:

- V0: `layers { layer { name type: "conv" num_output ... } }`, each layer's
  settings flat in a V0LayerParameter, padding as separate "padding" layers;
- V1: `layers { name type: CONVOLUTION blobs_lr: 1 weight_decay: 1 ... }`,
  the type an enum and per-blob learning rates in `blobs_lr`/`weight_decay`;
- current: `layer { name type: "Convolution" param { lr_mult } ... }`.

Net-level `input`/`input_dim`/`input_shape` fields become an Input layer, and
V1 data layers' scale/mean_file/crop_size/mirror move into transform_param.
`upgrade_net_as_needed` applies every step a NetParameter needs, in Caffe's
order (V0 -> V1, data transformation, V1 -> current, inputs, BatchNorm).
"""

from __future__ import annotations

import os
from pathlib import Path

from google.protobuf.message import Message

from caffesolve.errors import ConfigError
from caffesolve.log import LOG
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import read_binaryproto, read_prototxt

V1 = caffe_pb2.V1LayerParameter

# V1LayerParameter.LayerType -> the type string of today's LayerParameter.
V1_LAYER_TYPES: dict[int, str] = {
    V1.NONE: "",
    V1.ABSVAL: "AbsVal",
    V1.ACCURACY: "Accuracy",
    V1.ARGMAX: "ArgMax",
    V1.BNLL: "BNLL",
    V1.CONCAT: "Concat",
    V1.CONTRASTIVE_LOSS: "ContrastiveLoss",
    V1.CONVOLUTION: "Convolution",
    V1.DECONVOLUTION: "Deconvolution",
    V1.DATA: "Data",
    V1.DROPOUT: "Dropout",
    V1.DUMMY_DATA: "DummyData",
    V1.EUCLIDEAN_LOSS: "EuclideanLoss",
    V1.ELTWISE: "Eltwise",
    V1.EXP: "Exp",
    V1.FLATTEN: "Flatten",
    V1.HDF5_DATA: "HDF5Data",
    V1.HDF5_OUTPUT: "HDF5Output",
    V1.HINGE_LOSS: "HingeLoss",
    V1.IM2COL: "Im2col",
    V1.IMAGE_DATA: "ImageData",
    V1.INFOGAIN_LOSS: "InfogainLoss",
    V1.INNER_PRODUCT: "InnerProduct",
    V1.LRN: "LRN",
    V1.MEMORY_DATA: "MemoryData",
    V1.MULTINOMIAL_LOGISTIC_LOSS: "MultinomialLogisticLoss",
    V1.MVN: "MVN",
    V1.POOLING: "Pooling",
    V1.POWER: "Power",
    V1.RELU: "ReLU",
    V1.SIGMOID: "Sigmoid",
    V1.SIGMOID_CROSS_ENTROPY_LOSS: "SigmoidCrossEntropyLoss",
    V1.SILENCE: "Silence",
    V1.SOFTMAX: "Softmax",
    V1.SOFTMAX_LOSS: "SoftmaxWithLoss",
    V1.SPLIT: "Split",
    V1.SLICE: "Slice",
    V1.TANH: "TanH",
    V1.WINDOW_DATA: "WindowData",
    V1.THRESHOLD: "Threshold",
}

# V0 type strings -> V1 enum values (UpgradeV0LayerType).
V0_LAYER_TYPES: dict[str, int] = {
    "accuracy": V1.ACCURACY,
    "bnll": V1.BNLL,
    "concat": V1.CONCAT,
    "conv": V1.CONVOLUTION,
    "data": V1.DATA,
    "dropout": V1.DROPOUT,
    "euclidean_loss": V1.EUCLIDEAN_LOSS,
    "flatten": V1.FLATTEN,
    "hdf5_data": V1.HDF5_DATA,
    "hdf5_output": V1.HDF5_OUTPUT,
    "im2col": V1.IM2COL,
    "images": V1.IMAGE_DATA,
    "infogain_loss": V1.INFOGAIN_LOSS,
    "innerproduct": V1.INNER_PRODUCT,
    "lrn": V1.LRN,
    "multinomial_logistic_loss": V1.MULTINOMIAL_LOGISTIC_LOSS,
    "pool": V1.POOLING,
    "relu": V1.RELU,
    "sigmoid": V1.SIGMOID,
    "softmax": V1.SOFTMAX,
    "softmax_loss": V1.SOFTMAX_LOSS,
    "split": V1.SPLIT,
    "tanh": V1.TANH,
    "window_data": V1.WINDOW_DATA,
}

# V0 field -> {V0 type: (V1 sub-message, field there)}; the fields Caffe's
# UpgradeV0LayerParameter moves into a type's own parameter message.
_V0_FIELDS: dict[str, dict[str, tuple[str, str]]] = {
    "num_output": {
        "conv": ("convolution_param", "num_output"),
        "innerproduct": ("inner_product_param", "num_output"),
    },
    "biasterm": {
        "conv": ("convolution_param", "bias_term"),
        "innerproduct": ("inner_product_param", "bias_term"),
    },
    "weight_filler": {
        "conv": ("convolution_param", "weight_filler"),
        "innerproduct": ("inner_product_param", "weight_filler"),
    },
    "bias_filler": {
        "conv": ("convolution_param", "bias_filler"),
        "innerproduct": ("inner_product_param", "bias_filler"),
    },
    "pad": {"conv": ("convolution_param", "pad"), "pool": ("pooling_param", "pad")},
    "kernelsize": {
        "conv": ("convolution_param", "kernel_size"),
        "pool": ("pooling_param", "kernel_size"),
    },
    "group": {"conv": ("convolution_param", "group")},
    "stride": {
        "conv": ("convolution_param", "stride"),
        "pool": ("pooling_param", "stride"),
    },
    "pool": {"pool": ("pooling_param", "pool")},
    "dropout_ratio": {"dropout": ("dropout_param", "dropout_ratio")},
    "local_size": {"lrn": ("lrn_param", "local_size")},
    "alpha": {"lrn": ("lrn_param", "alpha")},
    "beta": {"lrn": ("lrn_param", "beta")},
    "k": {"lrn": ("lrn_param", "k")},
    "source": {
        "data": ("data_param", "source"),
        "hdf5_data": ("hdf5_data_param", "source"),
        "images": ("image_data_param", "source"),
        "window_data": ("window_data_param", "source"),
        "infogain_loss": ("infogain_loss_param", "source"),
    },
    "batchsize": {
        "data": ("data_param", "batch_size"),
        "hdf5_data": ("hdf5_data_param", "batch_size"),
        "images": ("image_data_param", "batch_size"),
        "window_data": ("window_data_param", "batch_size"),
    },
    "rand_skip": {
        "data": ("data_param", "rand_skip"),
        "images": ("image_data_param", "rand_skip"),
    },
    "shuffle_images": {"images": ("image_data_param", "shuffle")},
    "new_height": {"images": ("image_data_param", "new_height")},
    "new_width": {"images": ("image_data_param", "new_width")},
    "concat_dim": {"concat": ("concat_param", "concat_dim")},
    "det_fg_threshold": {"window_data": ("window_data_param", "fg_threshold")},
    "det_bg_threshold": {"window_data": ("window_data_param", "bg_threshold")},
    "det_fg_fraction": {"window_data": ("window_data_param", "fg_fraction")},
    "det_context_pad": {"window_data": ("window_data_param", "context_pad")},
    "det_crop_mode": {"window_data": ("window_data_param", "crop_mode")},
    "hdf5_output_param": {"hdf5_output": ("hdf5_output_param", "")},
}

# V0 fields that go to transform_param whatever the layer type.
_V0_TRANSFORM = {
    "scale": "scale",
    "meanfile": "mean_file",
    "cropsize": "crop_size",
    "mirror": "mirror",
}

# Data-layer fields that moved into transform_param (UpgradeNetDataTransformation).
_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")
_V1_DATA_PARAMS = {
    V1.DATA: "data_param",
    V1.IMAGE_DATA: "image_data_param",
    V1.WINDOW_DATA: "window_data_param",
}

_SRC = "upgrade_proto.cpp"


def _set_field(message: Message, field: str, value: object) -> None:
    """Set, append (repeated) or copy (sub-message) `value` into message.field."""
    descriptor = message.DESCRIPTOR.fields_by_name[field]
    if descriptor.is_repeated:
        getattr(message, field).append(value)
    elif descriptor.message_type is not None:
        getattr(message, field).CopyFrom(value)
    else:
        setattr(message, field, value)


# -- which upgrades a net needs ----------------------------------------------


def net_needs_v0_to_v1_upgrade(param: caffe_pb2.NetParameter) -> bool:
    """Any `layers` entry holding a V0 `layer` message (NetNeedsV0ToV1Upgrade)."""
    return any(v1.HasField("layer") for v1 in param.layers)


def net_needs_v1_to_v2_upgrade(param: caffe_pb2.NetParameter) -> bool:
    """Any `layers` (V1) entries at all (NetNeedsV1ToV2Upgrade)."""
    return len(param.layers) > 0


def net_needs_data_upgrade(param: caffe_pb2.NetParameter) -> bool:
    """V1 data layers with scale/mean_file/crop_size/mirror in their own param."""
    for v1 in param.layers:
        name = _V1_DATA_PARAMS.get(v1.type)
        if name and any(getattr(v1, name).HasField(f) for f in _TRANSFORM_FIELDS):
            return True
    return False


def net_needs_input_upgrade(param: caffe_pb2.NetParameter) -> bool:
    """Net-level `input` fields (NetNeedsInputUpgrade)."""
    return len(param.input) > 0


def net_needs_batch_norm_upgrade(param: caffe_pb2.NetParameter) -> bool:
    """BatchNorm layers declaring three ParamSpecs (old definition)."""
    return any(lp.type == "BatchNorm" and len(lp.param) == 3 for lp in param.layer)


def net_needs_upgrade(param: caffe_pb2.NetParameter) -> bool:
    """Caffe's NetNeedsUpgrade."""
    return (
        net_needs_v0_to_v1_upgrade(param)
        or net_needs_v1_to_v2_upgrade(param)
        or net_needs_data_upgrade(param)
        or net_needs_input_upgrade(param)
        or net_needs_batch_norm_upgrade(param)
    )


# -- V0 -> V1 ----------------------------------------------------------------------


def upgrade_v0_padding_layers(
    param: caffe_pb2.NetParameter, source: str = "<net>"
) -> caffe_pb2.NetParameter:
    """Fold V0 "padding" layers into the pad of the conv/pool layer they feed.

    Caffe's UpgradeV0PaddingLayers: the padding layer disappears and its
    consumer reads the padding layer's input with `pad` set.
    """
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layers[:]
    last_top: dict[str, int] = {name: -1 for name in param.input}
    for i, conn in enumerate(param.layers):
        v0 = conn.layer
        if v0.type != "padding":
            out.layers.add().CopyFrom(conn)
        for j, blob_name in enumerate(conn.bottom):
            if blob_name not in last_top:
                raise ConfigError(
                    f"{source}: Unknown blob input {blob_name} to layer "
                    f"'{v0.name}' (bottom index {j})"
                )
            top_idx = last_top[blob_name]
            if top_idx == -1:
                continue
            pad_conn = param.layers[top_idx]
            if pad_conn.layer.type != "padding":
                continue
            if v0.type not in ("conv", "pool"):
                raise ConfigError(
                    f"{source}: layer '{v0.name}': padding layer input to "
                    f"non-convolutional / non-pooling layer type {v0.type}"
                )
            if len(conn.bottom) != 1 or len(pad_conn.bottom) != 1:
                raise ConfigError(
                    f"{source}: layer '{v0.name}': a padding layer and its "
                    "consumer must each take a single bottom blob"
                )
            if len(pad_conn.top) != 1:
                raise ConfigError(
                    f"{source}: layer '{pad_conn.layer.name}': a padding layer "
                    "produces a single top blob"
                )
            upgraded = out.layers[len(out.layers) - 1]
            upgraded.layer.pad = pad_conn.layer.pad
            upgraded.bottom[j] = pad_conn.bottom[0]
        for blob_name in conn.top:
            last_top[blob_name] = i
    return out


def upgrade_v0_layer_parameter(
    conn: caffe_pb2.V1LayerParameter,
) -> tuple[caffe_pb2.V1LayerParameter, list[str]]:
    """One V0 layer as a V1LayerParameter, plus the problems met.

    Caffe's UpgradeV0LayerParameter: name and type, blobs, blobs_lr and
    weight_decay carry over; each flat V0 setting goes into its type's
    parameter message; a setting the type has no place for is reported.
    """
    out = caffe_pb2.V1LayerParameter()
    out.bottom.extend(conn.bottom)
    out.top.extend(conn.top)
    problems: list[str] = []
    if not conn.HasField("layer"):
        return out, problems
    v0 = conn.layer
    if v0.HasField("name"):
        out.name = v0.name
    kind = v0.type
    if v0.HasField("type"):
        if kind not in V0_LAYER_TYPES:
            raise ConfigError(f"layer '{v0.name}': Unknown layer name: {kind}")
        out.type = V0_LAYER_TYPES[kind]
    out.blobs.extend(v0.blobs)
    out.blobs_lr.extend(v0.blobs_lr)
    out.weight_decay.extend(v0.weight_decay)
    for field, places in _V0_FIELDS.items():
        if not v0.HasField(field):
            continue
        if kind not in places:
            problems.append(f"Unknown parameter {field} for layer type {kind}")
            continue
        message_name, target = places[kind]
        value = getattr(v0, field)
        if not target:  # the whole sub-message carries over
            getattr(out, message_name).CopyFrom(value)
        else:
            _set_field(getattr(out, message_name), target, value)
    for field, target in _V0_TRANSFORM.items():
        if v0.HasField(field):
            setattr(out.transform_param, target, getattr(v0, field))
    return out, problems


def upgrade_v0_net(
    param: caffe_pb2.NetParameter, source: str = "<net>"
) -> tuple[caffe_pb2.NetParameter, list[str]]:
    """A V0 net as a V1 net (`layers` with enum types); Caffe's UpgradeV0Net."""
    padded = upgrade_v0_padding_layers(param, source)
    out = caffe_pb2.NetParameter()
    if padded.HasField("name"):
        out.name = padded.name
    problems: list[str] = []
    for conn in padded.layers:
        v1, errs = upgrade_v0_layer_parameter(conn)
        out.layers.add().CopyFrom(v1)
        problems += errs
    out.input.extend(padded.input)
    out.input_dim.extend(padded.input_dim)
    if padded.HasField("force_backward"):
        out.force_backward = padded.force_backward
    return out, problems


# -- V1 -> current ------------------------------------------------------------------


def upgrade_net_data_transformation(param: caffe_pb2.NetParameter) -> None:
    """Move V1 data layers' scale/mean_file/crop_size/mirror to transform_param."""
    for v1 in param.layers:
        name = _V1_DATA_PARAMS.get(v1.type)
        if not name:
            continue
        data_param = getattr(v1, name)
        for field in _TRANSFORM_FIELDS:
            if data_param.HasField(field):
                setattr(v1.transform_param, field, getattr(data_param, field))
                data_param.ClearField(field)


# The sub-messages V1LayerParameter and LayerParameter have in common.
_SHARED_PARAMS = tuple(
    f.name
    for f in V1.DESCRIPTOR.fields
    if f.name.endswith("_param")
    and f.name in caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
)


def upgrade_v1_layer_type(layer_type: int, name: str = "") -> str:
    """The type string for a V1 LayerType enum value (UpgradeV1LayerType)."""
    if layer_type not in V1_LAYER_TYPES:
        raise ConfigError(
            f"layer '{name}': Unknown V1LayerParameter layer type: {layer_type}"
        )
    return V1_LAYER_TYPES[layer_type]


def upgrade_v1_layer_parameter(
    v1: caffe_pb2.V1LayerParameter,
    out: caffe_pb2.LayerParameter | None = None,
) -> tuple[caffe_pb2.LayerParameter, bool]:
    """A V1 layer as today's LayerParameter (written into `out` if given, so
    that a .caffemodel's blobs are copied once); False if a V0 part was
    dropped.

    Caffe's UpgradeV1LayerParameter: the type enum becomes its string; the
    per-blob lists `param` (names), `blob_share_mode`, `blobs_lr` and
    `weight_decay` become one ParamSpec per blob (name, share_mode, lr_mult,
    decay_mult); blobs, loss weights, include/exclude and every layer-specific
    parameter message carry over unchanged.
    """
    if out is None:
        out = caffe_pb2.LayerParameter()
    out.bottom.extend(v1.bottom)
    out.top.extend(v1.top)
    if v1.HasField("name"):
        out.name = v1.name
    out.include.extend(v1.include)
    out.exclude.extend(v1.exclude)
    if v1.HasField("type"):
        out.type = upgrade_v1_layer_type(v1.type, v1.name)
    out.blobs.extend(v1.blobs)

    def spec(i: int) -> caffe_pb2.ParamSpec:
        while len(out.param) <= i:
            out.param.add()
        return out.param[i]

    for i, name in enumerate(v1.param):
        spec(i).name = name
    for i, mode in enumerate(v1.blob_share_mode):
        spec(i).share_mode = mode  # STRICT = 0, PERMISSIVE = 1 in both enums
    for i, lr in enumerate(v1.blobs_lr):
        spec(i).lr_mult = lr
    for i, decay in enumerate(v1.weight_decay):
        spec(i).decay_mult = decay
    out.loss_weight.extend(v1.loss_weight)
    for name in _SHARED_PARAMS:
        if v1.HasField(name):
            getattr(out, name).CopyFrom(getattr(v1, name))
    return out, not v1.HasField("layer")


def upgrade_v1_net(
    param: caffe_pb2.NetParameter, source: str = "<net>"
) -> tuple[caffe_pb2.NetParameter, list[str]]:
    """A V1 net (`layers`) with `layer` entries instead (UpgradeV1Net)."""
    if len(param.layer):
        raise ConfigError(
            f"{source}: Refusing to upgrade inconsistent NetParameter input; the "
            "definition includes both 'layer' and 'layers' fields. The current "
            "format defines 'layer' fields with string type like layer { type: "
            "'Layer' ... } and not layers { type: LAYER ... }. Manually switch the "
            "definition to 'layer' format to continue."
        )
    out = caffe_pb2.NetParameter()
    for field, value in param.ListFields():  # all but the layers (and blobs)
        if field.name != "layers":
            out.MergeFrom(caffe_pb2.NetParameter(**{field.name: value}))
    problems: list[str] = []
    for i, v1 in enumerate(param.layers):
        _, ok = upgrade_v1_layer_parameter(v1, out.layer.add())
        if not ok:
            problems.append(f"Input NetParameter has V0 layer -- ignoring (layer {i})")
    return out, problems


# -- net inputs and BatchNorm ------------------------------------------------


def upgrade_net_input(param: caffe_pb2.NetParameter) -> None:
    """Net-level input/input_shape/input_dim -> a first layer "input" of type Input.

    Caffe's UpgradeNetInput: one top per `input`, shaped by `input_shape[i]`
    or by `input_dim[4i:4i+4]`; an `input` without any shape (old
    .caffemodel files) is just dropped.
    """
    has_shape = len(param.input_shape) > 0
    has_dim = len(param.input_dim) > 0
    if has_shape or has_dim:
        layer = caffe_pb2.LayerParameter(name="input", type="Input")
        for i, blob_name in enumerate(param.input):
            layer.top.append(blob_name)
            shape = layer.input_param.shape.add()
            if has_shape:
                if i >= len(param.input_shape):
                    raise ConfigError(
                        f"input '{blob_name}' has no input_shape (one is needed "
                        "per input)"
                    )
                shape.CopyFrom(param.input_shape[i])
            else:
                dims = param.input_dim[4 * i : 4 * i + 4]
                if len(dims) != 4:
                    raise ConfigError(
                        f"input '{blob_name}' needs 4 input_dim values "
                        f"({len(param.input_dim)} given for {len(param.input)} "
                        "inputs)"
                    )
                shape.dim.extend(dims)
        layers = [layer, *param.layer]
        del param.layer[:]
        param.layer.extend(layers)
    param.ClearField("input")
    param.ClearField("input_shape")
    param.ClearField("input_dim")


def upgrade_net_batch_norm(param: caffe_pb2.NetParameter) -> None:
    """Old BatchNorm layers with three ParamSpecs: lr_mult = decay_mult = 0."""
    for lp in param.layer:
        if lp.type == "BatchNorm" and len(lp.param) == 3:
            for spec in lp.param:
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0


# -- all together ------------------------------------------------------------


def upgrade_net_as_needed(param: caffe_pb2.NetParameter, source: str = "<net>") -> bool:
    """Upgrade `param` in place to today's format; False if something was lost.

    Caffe's UpgradeNetAsNeeded, with its log lines.
    """
    ok = True
    if net_needs_v0_to_v1_upgrade(param):
        LOG.info(
            f"{_SRC}:28",
            "Attempting to upgrade input file specified using deprecated "
            f"V0LayerParameter: {source}",
        )
        upgraded, problems = upgrade_v0_net(param, source)
        param.CopyFrom(upgraded)
        for p in problems:
            LOG.write("E", f"{_SRC}:237", p)
        ok &= not problems
        LOG.warning(
            f"{_SRC}:39",
            "Note that future Caffe releases will not support V0NetParameter; "
            "upgrade this and any other net protos to the new format.",
        )
    if net_needs_data_upgrade(param):
        LOG.info(
            f"{_SRC}:46",
            "Attempting to upgrade input file specified using deprecated "
            f"transformation parameters: {source}",
        )
        upgrade_net_data_transformation(param)
    if net_needs_v1_to_v2_upgrade(param):
        LOG.info(
            f"{_SRC}:55",
            "Attempting to upgrade input file specified using deprecated "
            f"V1LayerParameter: {source}",
        )
        upgraded, problems = upgrade_v1_net(param, source)
        param.CopyFrom(upgraded)
        for p in problems:
            LOG.write("E", f"{_SRC}:60", p)
        ok &= not problems
        if not problems:
            LOG.info(
                f"{_SRC}:63",
                "Successfully upgraded file specified using deprecated "
                "V1LayerParameter",
            )
    if net_needs_input_upgrade(param):
        LOG.info(
            f"{_SRC}:69",
            "Attempting to upgrade input file specified using deprecated "
            f"input fields: {source}",
        )
        upgrade_net_input(param)
        LOG.info(
            f"{_SRC}:72",
            "Successfully upgraded file specified using deprecated input fields.",
        )
    if net_needs_batch_norm_upgrade(param):
        LOG.info(
            f"{_SRC}:79",
            "Attempting to upgrade batch norm layers using deprecated params: "
            f"{source}",
        )
        upgrade_net_batch_norm(param)
    return ok


def read_net_params_from_text_file(
    path: str | os.PathLike[str],
) -> caffe_pb2.NetParameter:
    """A net prototxt, upgraded as needed (ReadNetParamsFromTextFileOrDie)."""
    param = read_prototxt(path, caffe_pb2.NetParameter())
    upgrade_net_as_needed(param, str(path))
    return param


def read_net_params_from_binary_file(
    path: str | os.PathLike[str],
) -> caffe_pb2.NetParameter:
    """A binary NetParameter (.caffemodel), upgraded as needed."""
    param = read_binaryproto(Path(path), caffe_pb2.NetParameter())
    upgrade_net_as_needed(param, str(path))
    return param
