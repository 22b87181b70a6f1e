"""caffe.classifier: the module caffesolve.pycaffe.classifier under pycaffe's name."""

import sys

import caffesolve.pycaffe.classifier as _module

sys.modules[__name__] = _module
