"""pycaffe's caffe.draw: a NetParameter as a picture (python/caffe/draw.py),
drawn by caffesolve.draw (`caffesolve draw`), which needs pydot (the `draw`
extra) and Graphviz's `dot` for pictures (.dot / .raw text need neither).

    from caffe.proto import caffe_pb2
    import caffe.draw
    caffe.draw.draw_net_to_file(net_param, 'net.png', 'LR', phase=caffe.TRAIN)
"""

from __future__ import annotations

import os
from typing import Any

from caffesolve import draw
from caffesolve.proto import caffe_pb2
from caffesolve.proto.upgrade import net_needs_upgrade, upgrade_net_as_needed


def _upgraded(caffe_net: caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
    if not net_needs_upgrade(caffe_net):
        return caffe_net
    param = caffe_pb2.NetParameter()
    param.CopyFrom(caffe_net)
    upgrade_net_as_needed(param, "<NetParameter>")
    return param


def get_pydot_graph(
    caffe_net: caffe_pb2.NetParameter,
    rankdir: str,
    label_edges: bool = True,
    phase: int | None = None,
    display_lrm: bool = False,
) -> Any:
    """The pydot graph of the net: layers as boxes, blobs as octagons;
    `phase` keeps the layers a net of that phase has (None: all)."""
    return draw.net_graph(
        _upgraded(caffe_net), rankdir, phase, label_edges, display_lrm
    )


def draw_net(
    caffe_net: caffe_pb2.NetParameter,
    rankdir: str,
    ext: str = "png",
    phase: int | None = None,
    display_lrm: bool = False,
) -> bytes:
    """The picture's bytes in format `ext` (png, svg, pdf, ... or dot/raw text)."""
    graph = get_pydot_graph(caffe_net, rankdir, phase=phase, display_lrm=display_lrm)
    return draw.render(graph, ext, f"draw_net(ext={ext!r})")


def draw_net_to_file(
    caffe_net: caffe_pb2.NetParameter,
    filename: str | os.PathLike[str],
    rankdir: str = "LR",
    phase: int | None = None,
    display_lrm: bool = False,
) -> None:
    """Draw the net into `filename`, in the format its extension names."""
    ext = str(filename).rsplit(".", 1)[-1]
    graph = get_pydot_graph(caffe_net, rankdir, phase=phase, display_lrm=display_lrm)
    draw.write_picture(filename, draw.render(graph, ext, str(filename)))
