"""caffe.detector: the module caffesolve.pycaffe.detector under pycaffe's name."""

import sys

import caffesolve.pycaffe.detector as _module

sys.modules[__name__] = _module
