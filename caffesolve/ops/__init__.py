"""Array functions that know no Blob, Layer or proto (Caffe's util/)."""
