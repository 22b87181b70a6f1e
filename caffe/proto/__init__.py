"""caffe.proto: Caffe's protobuf schema; caffe_pb2 is caffesolve's generated module."""

from caffe.proto import caffe_pb2

__all__ = ["caffe_pb2"]
