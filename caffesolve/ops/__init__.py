"""Array functions that know no Blob, Layer or proto (Caffe's util/).

Importing the package registers the convolution lowerings (ops/conv.py's
LOWERINGS), each strategy module adding its own.
"""

import importlib

for _module in ("per_image", "batch_inner", "row_shift"):
    importlib.import_module(f"caffesolve.ops.{_module}")
