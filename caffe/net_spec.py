"""caffe.net_spec: the module caffesolve.pycaffe.net_spec under pycaffe's name."""

import sys

import caffesolve.pycaffe.net_spec as _module

sys.modules[__name__] = _module
