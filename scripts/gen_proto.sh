#!/usr/bin/env bash
# Regenerate caffesolve/proto/caffe_pb2.py from proto/caffe.proto.
# Needs the `dev` extra (grpcio-tools pinned in pyproject.toml, so the output is
# byte-for-byte reproducible; tests/test_proto.py checks it).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m grpc_tools.protoc --proto_path=proto --python_out=caffesolve/proto proto/caffe.proto
