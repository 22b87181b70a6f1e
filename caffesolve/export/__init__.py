"""Exporters: a built Net written in another runtime's format.

`graph.py` holds the ONNX graph under construction, `onnx.py` the table of
one small function per Caffe layer type (keyed like the LAYERS registry), and
`convert.py` walks a Net through that table and checks the result against
onnxruntime. They read a built Net; they never re-parse prototxt text.
"""
