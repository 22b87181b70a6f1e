"""caffe.proto.caffe_pb2: caffesolve.proto.caffe_pb2 under pycaffe's name."""

import sys

import caffesolve.proto.caffe_pb2 as _module

sys.modules[__name__] = _module
