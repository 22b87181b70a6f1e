"""Data sources and Caffe's data tools.

db.py             Caffe's util/db: cursors, writers and atomic builds over
lmdb_source.py      LMDB Datum records (read, write, decode a batch)
leveldb_source.py   and LevelDB (the `leveldb` extra, plyvel)
transformer.py    transform_param: mean, scale, crop, mirror over a batch
prefetch.py       the one background thread that loads the next batches
image.py          OpenCV's imread / imdecode / resize (INTER_LINEAR) / imencode
imageset.py       image lists; `caffesolve data images` (convert_imageset)
image_mean.py     `caffesolve data mean` (compute_image_mean)
idx.py            MNIST IDX files: parse, validate, checksum
datasets.py       `caffesolve data mnist | fashion-mnist`: download, write LMDBs
cifar10.py        `caffesolve data cifar10`: the binary tarball, LMDBs, mean
"""
