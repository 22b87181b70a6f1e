"""A net as a picture, as Caffe's python/caffe/draw.py and draw_net.py draw it.

Layers are boxes labelled "name (Type)" (plus kernel size, stride and pad
for Convolution, Deconvolution and Pooling, and the pooling method), coloured
by type: convolutions red, pooling orange, InnerProduct purple, in-place
layers (ReLU and friends) green, others blue. Blobs are grey octagons; an
edge from a layer to its top carries the layer's num_output (or a data
layer's batch size). Graphviz lays the graph out, through pydot (the `draw`
extra) and Graphviz's `dot` program; a .dot file needs neither program.

The drawing reads the NetParameter (upgraded, filtered by phase like a Net
would be), so a train_test net draws without its databases.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from caffesolve.errors import ConfigError, MissingExtraError, require_extra
from caffesolve.net_param import filter_net
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import atomic_write_bytes
from caffesolve.proto.upgrade import read_net_params_from_text_file

LAYER_STYLE = {"shape": "record", "style": "filled"}
LAYER_COLOUR = "#6495ED"
IN_PLACE_COLOUR = "#90EE90"
TYPE_COLOURS = {
    "Convolution": "#FF5050",
    "Deconvolution": "#FF5050",
    "Pooling": "#FF9900",
    "InnerProduct": "#CC33FF",
}
BLOB_STYLE = {"shape": "octagon", "fillcolor": "#E0E0E0", "style": "filled"}
TEXT_FORMATS = ("dot", "raw")  # DOT source, no Graphviz needed


def _record_text(text: str) -> str:
    """Escape the characters a Graphviz record label treats as structure."""
    return re.sub(r"([{}|<>])", r"\\\1", text)


def _spatial(layer: caffe_pb2.LayerParameter) -> list[str]:
    """['kernel size: 5', 'stride: 1', 'pad: 0'] (h x w where they differ)."""
    if layer.type == "Pooling":
        p = layer.pooling_param
        if p.global_pooling:
            return ["global"]
        k = (p.kernel_h, p.kernel_w) if p.HasField("kernel_h") else (p.kernel_size,) * 2
        s = (p.stride_h, p.stride_w) if p.HasField("stride_h") else (p.stride,) * 2
        d = (p.pad_h, p.pad_w) if p.HasField("pad_h") else (p.pad,) * 2
    elif layer.type in ("Convolution", "Deconvolution"):
        c = layer.convolution_param

        def pair(h: str, w: str, many: Any, default: int) -> tuple[int, int]:
            if c.HasField(h):
                return getattr(c, h), getattr(c, w)
            values = list(many) or [default]
            return values[0], values[-1]

        k = pair("kernel_h", "kernel_w", c.kernel_size, 1)
        s = pair("stride_h", "stride_w", c.stride, 1)
        d = pair("pad_h", "pad_w", c.pad, 0)
    else:
        return []

    def show(v: tuple[int, int]) -> str:
        return str(v[0]) if v[0] == v[1] else f"{v[0]}x{v[1]}"

    return [f"kernel size: {show(k)}", f"stride: {show(s)}", f"pad: {show(d)}"]


LR_MULT_TYPES = ("Convolution", "Deconvolution", "InnerProduct")


def layer_lr_mult(layer: caffe_pb2.LayerParameter) -> tuple[float, float]:
    """The lr_mult of a layer's weights and bias (1 where no ParamSpec says),
    draw.py's get_layer_lr_mult."""
    if len(layer.param) > 2:
        raise ConfigError(
            f"layer '{layer.name}' ({layer.type}): {len(layer.param)} param specs; "
            "a weight and a bias lr_mult are drawn, so give at most two"
        )
    mults = [float(spec.lr_mult) for spec in layer.param]
    mults += [1.0] * (2 - len(mults))
    return mults[0], mults[1]


def layer_label(
    layer: caffe_pb2.LayerParameter, rankdir: str, display_lrm: bool = False
) -> str:
    """The box text: name, (Type[ method]), spatial parameters, and with
    `display_lrm` the lr_mults of a learning layer ('lr mult: 1.0, 2.0',
    unless both are 0); one line each when the graph runs left to right,
    spaces when top to bottom."""
    kind = layer.type
    if kind == "Pooling":
        method = caffe_pb2.PoolingParameter.PoolMethod.Name(layer.pooling_param.pool)
        kind = f"{kind} {method}"
    parts = [layer.name, f"({kind})", *_spatial(layer)]
    if display_lrm and layer.type in LR_MULT_TYPES:
        weights, bias = layer_lr_mult(layer)
        if weights or bias:
            parts.append(f"lr mult: {weights:.1f}, {bias:.1f}")
    separator = " " if rankdir in ("TB", "BT") else "\n"
    return _record_text(separator.join(parts))


def edge_label(layer: caffe_pb2.LayerParameter) -> str:
    """What Caffe writes on a layer's edges to its tops."""
    if layer.type == "Data":
        return f"Batch {layer.data_param.batch_size}"
    if layer.type in ("Convolution", "Deconvolution"):
        return str(layer.convolution_param.num_output)
    if layer.type == "InnerProduct":
        return str(layer.inner_product_param.num_output)
    return ""


def layer_colour(layer: caffe_pb2.LayerParameter) -> str:
    if len(layer.bottom) == 1 and list(layer.bottom) == list(layer.top):
        return IN_PLACE_COLOUR
    return TYPE_COLOURS.get(layer.type, LAYER_COLOUR)


def net_graph(
    param: caffe_pb2.NetParameter,
    rankdir: str = "LR",
    phase: int | None = None,
    label_edges: bool = True,
    display_lrm: bool = False,
) -> Any:
    """The pydot graph of `param`; `phase` (TRAIN/TEST) keeps the layers a
    net of that phase has, None keeps them all (draw_net.py's ALL).
    `label_edges` writes edge_label on the edges to a layer's tops;
    `display_lrm` adds the lr_mults to the learning layers' boxes."""
    require_extra("pydot", "draw", "caffesolve draw needs pydot")
    import pydot

    if phase is not None:
        state = caffe_pb2.NetParameter()
        state.CopyFrom(param)
        state.state.phase = phase
        param = filter_net(state, log=False)
    graph = pydot.Dot(
        "net", graph_type="digraph", rankdir=rankdir, label=param.name or "Net"
    )
    blobs: dict[str, str] = {}

    def blob_node(name: str) -> str:
        if name not in blobs:
            blobs[name] = f"blob{len(blobs)}"
            graph.add_node(
                pydot.Node(blobs[name], label=_record_text(name), **BLOB_STYLE)
            )
        return blobs[name]

    for i, layer in enumerate(param.layer):
        node = f"layer{i}"
        graph.add_node(
            pydot.Node(
                node,
                label=layer_label(layer, rankdir, display_lrm),
                fillcolor=layer_colour(layer),
                **LAYER_STYLE,
            )
        )
        for bottom in layer.bottom:
            graph.add_edge(pydot.Edge(blob_node(bottom), node))
        label = edge_label(layer) if label_edges else ""
        for top in layer.top:
            attrs = {"label": label} if label else {}
            graph.add_edge(pydot.Edge(node, blob_node(top), **attrs))
    return graph


def draw_net_file(
    net_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    rankdir: str = "LR",
    phase: int | None = None,
) -> None:
    """Draw the net prototxt at `net_path` into `out`; the format is the
    extension (png, svg, pdf, ... any Graphviz writes; .dot / .raw: DOT text)."""
    fmt = Path(out).suffix.lstrip(".").lower()
    if not fmt:
        raise ConfigError(f"{out}: give the picture an extension (.png, .svg, .dot)")
    param = read_net_params_from_text_file(net_path)
    write_picture(out, render(net_graph(param, rankdir, phase), fmt, str(out)))


def render(graph: Any, fmt: str, where: str) -> bytes:
    """`graph` as the bytes of a .`fmt` file: DOT text for .dot / .raw,
    otherwise what Graphviz's `dot` draws; errors start with `where`."""
    fmt = fmt.lower()
    if fmt in TEXT_FORMATS:
        return graph.to_string().encode()
    if fmt not in graph.formats:
        raise ConfigError(
            f"{where}: Graphviz does not write .{fmt} files (use .png, .svg, .pdf, "
            ".jpg, or .dot for the DOT text)"
        )
    try:
        return graph.create(format=fmt)
    except FileNotFoundError:
        raise MissingExtraError(
            "caffesolve draw needs Graphviz's `dot` program (not found): install "
            "Graphviz (Debian/Ubuntu: apt-get install graphviz), or write a .dot file"
        ) from None


def write_picture(out: str | os.PathLike[str], data: bytes) -> None:
    """Write the picture atomically; an unwritable path is a ConfigError."""
    try:
        atomic_write_bytes(out, data)
    except OSError as e:
        raise ConfigError(f"{out}: cannot write the picture ({e.strerror})") from None
