"""caffe.pycaffe: Net and the solvers, where pycaffe defined them."""

from caffesolve.pycaffe import (  # noqa: F401
    NCCL,
    AdaDeltaSolver,
    AdaGradSolver,
    AdamSolver,
    NesterovSolver,
    Net,
    RMSPropSolver,
    SGDSolver,
    Timer,
)
