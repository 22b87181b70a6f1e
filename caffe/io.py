"""caffe.io: the module caffesolve.pycaffe.io under pycaffe's name."""

import sys

import caffesolve.pycaffe.io as _module

sys.modules[__name__] = _module
