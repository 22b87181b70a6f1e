"""caffesolve: Caffe's solvers, layers and file formats in NumPy."""

__version__ = "0.1.0"
