"""Caffe's protobuf schema (generated caffe_pb2) and file reading helpers."""

from caffesolve.proto import caffe_pb2

__all__ = ["caffe_pb2"]
