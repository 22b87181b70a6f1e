"""The pycaffe face: Caffe's Python API (`import caffe`) over caffesolve's
Net and Solver. The top-level `caffe` package re-exports this one, so
pycaffe scripts run unchanged:

    import caffe
    from caffe import layers as L, params as P
    from caffe.proto import caffe_pb2

net.py (Net: dict views over the Net's names and blobs), solver.py (the
solvers), net_spec.py (NetSpec), io.py (Transformer, images, protos),
classifier.py / detector.py, draw.py (on caffesolve.draw), layer.py (the
base of Python layers), runtime.py (mode, seed, log, Timer, NCCL).
"""

from caffesolve.proto.caffe_pb2 import TEST, TRAIN
from caffesolve.pycaffe import io
from caffesolve.pycaffe.classifier import Classifier
from caffesolve.pycaffe.detector import Detector
from caffesolve.pycaffe.layer import Layer
from caffesolve.pycaffe.net import Net
from caffesolve.pycaffe.net_spec import NetSpec, layers, params, to_proto
from caffesolve.pycaffe.runtime import (
    CAFFE_VERSION,
    NCCL,
    Timer,
    has_nccl,
    init_log,
    layer_type_list,
    log,
    set_device,
    set_mode_cpu,
    set_mode_gpu,
    set_multiprocess,
    set_random_seed,
    set_solver_count,
    set_solver_rank,
    solver_count,
    solver_rank,
)
from caffesolve.pycaffe.solver import (
    AdaDeltaSolver,
    AdaGradSolver,
    AdamSolver,
    NesterovSolver,
    RMSPropSolver,
    SGDSolver,
    Solver,
    get_solver,
)

__version__ = CAFFE_VERSION

__all__ = [
    "TEST",
    "TRAIN",
    "AdaDeltaSolver",
    "AdaGradSolver",
    "AdamSolver",
    "Classifier",
    "Detector",
    "Layer",
    "NCCL",
    "Net",
    "NesterovSolver",
    "NetSpec",
    "RMSPropSolver",
    "SGDSolver",
    "Solver",
    "Timer",
    "get_solver",
    "has_nccl",
    "init_log",
    "io",
    "layer_type_list",
    "layers",
    "log",
    "params",
    "set_device",
    "set_mode_cpu",
    "set_mode_gpu",
    "set_multiprocess",
    "set_random_seed",
    "set_solver_count",
    "set_solver_rank",
    "solver_count",
    "solver_rank",
    "to_proto",
]
