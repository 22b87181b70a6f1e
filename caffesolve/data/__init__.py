"""Data sources: LMDB Datum records, the data transformer, IDX files, datasets.

lmdb_source.py  read (Data layer) and write (convert_mnist_data) Caffe LMDBs
transformer.py  transform_param: mean, scale, crop, mirror over a batch
prefetch.py     the one background thread that loads the next batches
idx.py          MNIST IDX files: parse, validate, checksum
datasets.py     `caffesolve data mnist | fashion-mnist`: get files, write LMDBs
"""
