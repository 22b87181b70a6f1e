"""pycaffe's `caffe` package, provided by caffesolve: the same objects as
caffesolve.pycaffe under Caffe's names, as Pillow provides `PIL`.

    import caffe
    net = caffe.Net('deploy.prototxt', caffe.TEST, weights='w.caffemodel')

The submodules caffe.io, caffe.draw, caffe.net_spec, caffe.classifier,
caffe.detector and caffe.proto.caffe_pb2 are caffesolve's own modules under
these names (one module object each, so changes made through either name
are seen through both). caffe.pycaffe holds Net and the solvers, as in Caffe.
"""

from caffe import proto
from caffesolve.pycaffe import *  # noqa: F403
from caffesolve.pycaffe import __all__, __version__  # noqa: F401

__all__ = [*__all__, "proto"]
