"""caffe.draw: the module caffesolve.pycaffe.draw under pycaffe's name."""

import sys

import caffesolve.pycaffe.draw as _module

sys.modules[__name__] = _module
