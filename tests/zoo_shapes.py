"""The blob shapes of the zoo deploy nets at batch 1 and their full input
size, worked out by hand from Caffe's output-size rules (not read from a
built net):

- Convolution (conv_layer.cpp): out = (in + 2*pad - kernel) / stride + 1,
  rounded down.
- Pooling (pooling_layer.cpp): out = ceil((in + 2*pad - kernel) / stride) + 1,
  one less when pad > 0 and the last window would start in the padding
  ((out - 1) * stride >= in + pad); global_pooling gives 1x1.
- InnerProduct: (N, num_output); Concat adds channels; Eltwise, BatchNorm,
  Scale, LRN, ReLU, Dropout keep the shape.

The ceil matters: rounded down, GoogLeNet's pool1 would give 55 (not 56), its
pool2 27, pool3 13 and pool4 6, SqueezeNet's pool1 55, pool3 27 and pool5 13,
ResNet-50's pool1 55.
"""

from __future__ import annotations

Shape = tuple[int, ...]

# AlexNet, 227x227. conv1: (227 - 11)/4 + 1 = 55; pool1: ceil((55 - 3)/2) + 1
# = 27; conv2: (27 + 4 - 5)/1 + 1 = 27; pool2: ceil(24/2) + 1 = 13; conv3-5
# keep 13 (pad 1, kernel 3); pool5: ceil(10/2) + 1 = 6, so fc6 reads 256*6*6.
ALEXNET: dict[str, Shape] = {
    "data": (1, 3, 227, 227),
    "conv1": (1, 96, 55, 55),
    "norm1": (1, 96, 55, 55),
    "pool1": (1, 96, 27, 27),
    "conv2": (1, 256, 27, 27),
    "norm2": (1, 256, 27, 27),
    "pool2": (1, 256, 13, 13),
    "conv3": (1, 384, 13, 13),
    "conv4": (1, 384, 13, 13),
    "conv5": (1, 256, 13, 13),
    "pool5": (1, 256, 6, 6),
    "fc6": (1, 4096),
    "fc7": (1, 4096),
    "fc8": (1, 1000),
    "prob": (1, 1000),
}

# CaffeNet pools before it normalises: norm1 and norm2 take the pooled sizes.
CAFFENET: dict[str, Shape] = {
    **ALEXNET,
    "norm1": (1, 96, 27, 27),
    "norm2": (1, 256, 13, 13),
}

# VGG-16, 224x224: 3x3 pad 1 convolutions keep the size, each 2x2 stride 2
# pool halves it: ceil((224 - 2)/2) + 1 = 112, then 56, 28, 14, 7.
VGG16: dict[str, Shape] = {
    "data": (1, 3, 224, 224),
    "conv1_1": (1, 64, 224, 224),
    "conv1_2": (1, 64, 224, 224),
    "pool1": (1, 64, 112, 112),
    "conv2_1": (1, 128, 112, 112),
    "conv2_2": (1, 128, 112, 112),
    "pool2": (1, 128, 56, 56),
    "conv3_1": (1, 256, 56, 56),
    "conv3_2": (1, 256, 56, 56),
    "conv3_3": (1, 256, 56, 56),
    "pool3": (1, 256, 28, 28),
    "conv4_1": (1, 512, 28, 28),
    "conv4_2": (1, 512, 28, 28),
    "conv4_3": (1, 512, 28, 28),
    "pool4": (1, 512, 14, 14),
    "conv5_1": (1, 512, 14, 14),
    "conv5_2": (1, 512, 14, 14),
    "conv5_3": (1, 512, 14, 14),
    "pool5": (1, 512, 7, 7),
    "fc6": (1, 4096),
    "fc7": (1, 4096),
    "fc8": (1, 1000),
    "prob": (1, 1000),
}

# GoogLeNet, 224x224. conv1 7x7/2 pad 3: (224 + 6 - 7)/2 + 1 = 112;
# pool1 3x3/2: ceil(109/2) + 1 = 56; conv2 keeps 56; pool2: ceil(53/2) + 1
# = 28; pool3: ceil(25/2) + 1 = 14; pool4: ceil(11/2) + 1 = 7; pool5 7x7/1:
# 1. An inception's 3x3/1 pad 1 pool keeps the size (ceil(27/1) + 1 = 28;
# the window starting at 27 begins inside the input). Its output concatenates
# 1x1 + 3x3 + 5x5 + pool_proj channels; its pool keeps the input's channels.
GOOGLENET: dict[str, Shape] = {
    "data": (1, 3, 224, 224),
    "conv1/7x7_s2": (1, 64, 112, 112),
    "pool1/3x3_s2": (1, 64, 56, 56),
    "pool1/norm1": (1, 64, 56, 56),
    "conv2/3x3_reduce": (1, 64, 56, 56),
    "conv2/3x3": (1, 192, 56, 56),
    "conv2/norm2": (1, 192, 56, 56),
    "pool2/3x3_s2": (1, 192, 28, 28),
    # 3a: 64 + 128 + 32 + 32 = 256
    "inception_3a/1x1": (1, 64, 28, 28),
    "inception_3a/3x3_reduce": (1, 96, 28, 28),
    "inception_3a/3x3": (1, 128, 28, 28),
    "inception_3a/5x5_reduce": (1, 16, 28, 28),
    "inception_3a/5x5": (1, 32, 28, 28),
    "inception_3a/pool": (1, 192, 28, 28),
    "inception_3a/pool_proj": (1, 32, 28, 28),
    "inception_3a/output": (1, 256, 28, 28),
    # 3b: 128 + 192 + 96 + 64 = 480
    "inception_3b/1x1": (1, 128, 28, 28),
    "inception_3b/3x3_reduce": (1, 128, 28, 28),
    "inception_3b/3x3": (1, 192, 28, 28),
    "inception_3b/5x5_reduce": (1, 32, 28, 28),
    "inception_3b/5x5": (1, 96, 28, 28),
    "inception_3b/pool": (1, 256, 28, 28),
    "inception_3b/pool_proj": (1, 64, 28, 28),
    "inception_3b/output": (1, 480, 28, 28),
    "pool3/3x3_s2": (1, 480, 14, 14),
    # 4a: 192 + 208 + 48 + 64 = 512
    "inception_4a/1x1": (1, 192, 14, 14),
    "inception_4a/3x3_reduce": (1, 96, 14, 14),
    "inception_4a/3x3": (1, 208, 14, 14),
    "inception_4a/5x5_reduce": (1, 16, 14, 14),
    "inception_4a/5x5": (1, 48, 14, 14),
    "inception_4a/pool": (1, 480, 14, 14),
    "inception_4a/pool_proj": (1, 64, 14, 14),
    "inception_4a/output": (1, 512, 14, 14),
    # 4b: 160 + 224 + 64 + 64 = 512
    "inception_4b/1x1": (1, 160, 14, 14),
    "inception_4b/3x3_reduce": (1, 112, 14, 14),
    "inception_4b/3x3": (1, 224, 14, 14),
    "inception_4b/5x5_reduce": (1, 24, 14, 14),
    "inception_4b/5x5": (1, 64, 14, 14),
    "inception_4b/pool": (1, 512, 14, 14),
    "inception_4b/pool_proj": (1, 64, 14, 14),
    "inception_4b/output": (1, 512, 14, 14),
    # 4c: 128 + 256 + 64 + 64 = 512
    "inception_4c/1x1": (1, 128, 14, 14),
    "inception_4c/3x3_reduce": (1, 128, 14, 14),
    "inception_4c/3x3": (1, 256, 14, 14),
    "inception_4c/5x5_reduce": (1, 24, 14, 14),
    "inception_4c/5x5": (1, 64, 14, 14),
    "inception_4c/pool": (1, 512, 14, 14),
    "inception_4c/pool_proj": (1, 64, 14, 14),
    "inception_4c/output": (1, 512, 14, 14),
    # 4d: 112 + 288 + 64 + 64 = 528
    "inception_4d/1x1": (1, 112, 14, 14),
    "inception_4d/3x3_reduce": (1, 144, 14, 14),
    "inception_4d/3x3": (1, 288, 14, 14),
    "inception_4d/5x5_reduce": (1, 32, 14, 14),
    "inception_4d/5x5": (1, 64, 14, 14),
    "inception_4d/pool": (1, 512, 14, 14),
    "inception_4d/pool_proj": (1, 64, 14, 14),
    "inception_4d/output": (1, 528, 14, 14),
    # 4e: 256 + 320 + 128 + 128 = 832
    "inception_4e/1x1": (1, 256, 14, 14),
    "inception_4e/3x3_reduce": (1, 160, 14, 14),
    "inception_4e/3x3": (1, 320, 14, 14),
    "inception_4e/5x5_reduce": (1, 32, 14, 14),
    "inception_4e/5x5": (1, 128, 14, 14),
    "inception_4e/pool": (1, 528, 14, 14),
    "inception_4e/pool_proj": (1, 128, 14, 14),
    "inception_4e/output": (1, 832, 14, 14),
    "pool4/3x3_s2": (1, 832, 7, 7),
    # 5a: 256 + 320 + 128 + 128 = 832
    "inception_5a/1x1": (1, 256, 7, 7),
    "inception_5a/3x3_reduce": (1, 160, 7, 7),
    "inception_5a/3x3": (1, 320, 7, 7),
    "inception_5a/5x5_reduce": (1, 32, 7, 7),
    "inception_5a/5x5": (1, 128, 7, 7),
    "inception_5a/pool": (1, 832, 7, 7),
    "inception_5a/pool_proj": (1, 128, 7, 7),
    "inception_5a/output": (1, 832, 7, 7),
    # 5b: 384 + 384 + 128 + 128 = 1024
    "inception_5b/1x1": (1, 384, 7, 7),
    "inception_5b/3x3_reduce": (1, 192, 7, 7),
    "inception_5b/3x3": (1, 384, 7, 7),
    "inception_5b/5x5_reduce": (1, 48, 7, 7),
    "inception_5b/5x5": (1, 128, 7, 7),
    "inception_5b/pool": (1, 832, 7, 7),
    "inception_5b/pool_proj": (1, 128, 7, 7),
    "inception_5b/output": (1, 1024, 7, 7),
    "pool5/7x7_s1": (1, 1024, 1, 1),
    "loss3/classifier": (1, 1000),
    "prob": (1, 1000),
}

# ResNet-50, 224x224. conv1 7x7/2 pad 3: 112; pool1 3x3/2: ceil(109/2) + 1 =
# 56; res3a, res4a, res5a halve with 1x1 stride 2 convolutions: (56 - 1)/2 + 1
# = 28, then 14, 7; pool5 7x7/1: 1. BatchNorm, Scale and ReLU work in place.
RESNET50: dict[str, Shape] = {
    "data": (1, 3, 224, 224),
    "conv1": (1, 64, 112, 112),
    "pool1": (1, 64, 56, 56),
    "res2a_branch1": (1, 256, 56, 56),
    "res2a_branch2a": (1, 64, 56, 56),
    "res2a_branch2b": (1, 64, 56, 56),
    "res2a_branch2c": (1, 256, 56, 56),
    "res2a": (1, 256, 56, 56),
    "res2b_branch2a": (1, 64, 56, 56),
    "res2b_branch2b": (1, 64, 56, 56),
    "res2b_branch2c": (1, 256, 56, 56),
    "res2b": (1, 256, 56, 56),
    "res2c_branch2a": (1, 64, 56, 56),
    "res2c_branch2b": (1, 64, 56, 56),
    "res2c_branch2c": (1, 256, 56, 56),
    "res2c": (1, 256, 56, 56),
    "res3a_branch1": (1, 512, 28, 28),
    "res3a_branch2a": (1, 128, 28, 28),
    "res3a_branch2b": (1, 128, 28, 28),
    "res3a_branch2c": (1, 512, 28, 28),
    "res3a": (1, 512, 28, 28),
    "res3b_branch2a": (1, 128, 28, 28),
    "res3b_branch2b": (1, 128, 28, 28),
    "res3b_branch2c": (1, 512, 28, 28),
    "res3b": (1, 512, 28, 28),
    "res3c_branch2a": (1, 128, 28, 28),
    "res3c_branch2b": (1, 128, 28, 28),
    "res3c_branch2c": (1, 512, 28, 28),
    "res3c": (1, 512, 28, 28),
    "res3d_branch2a": (1, 128, 28, 28),
    "res3d_branch2b": (1, 128, 28, 28),
    "res3d_branch2c": (1, 512, 28, 28),
    "res3d": (1, 512, 28, 28),
    "res4a_branch1": (1, 1024, 14, 14),
    "res4a_branch2a": (1, 256, 14, 14),
    "res4a_branch2b": (1, 256, 14, 14),
    "res4a_branch2c": (1, 1024, 14, 14),
    "res4a": (1, 1024, 14, 14),
    "res4b_branch2a": (1, 256, 14, 14),
    "res4b_branch2b": (1, 256, 14, 14),
    "res4b_branch2c": (1, 1024, 14, 14),
    "res4b": (1, 1024, 14, 14),
    "res4c_branch2a": (1, 256, 14, 14),
    "res4c_branch2b": (1, 256, 14, 14),
    "res4c_branch2c": (1, 1024, 14, 14),
    "res4c": (1, 1024, 14, 14),
    "res4d_branch2a": (1, 256, 14, 14),
    "res4d_branch2b": (1, 256, 14, 14),
    "res4d_branch2c": (1, 1024, 14, 14),
    "res4d": (1, 1024, 14, 14),
    "res4e_branch2a": (1, 256, 14, 14),
    "res4e_branch2b": (1, 256, 14, 14),
    "res4e_branch2c": (1, 1024, 14, 14),
    "res4e": (1, 1024, 14, 14),
    "res4f_branch2a": (1, 256, 14, 14),
    "res4f_branch2b": (1, 256, 14, 14),
    "res4f_branch2c": (1, 1024, 14, 14),
    "res4f": (1, 1024, 14, 14),
    "res5a_branch1": (1, 2048, 7, 7),
    "res5a_branch2a": (1, 512, 7, 7),
    "res5a_branch2b": (1, 512, 7, 7),
    "res5a_branch2c": (1, 2048, 7, 7),
    "res5a": (1, 2048, 7, 7),
    "res5b_branch2a": (1, 512, 7, 7),
    "res5b_branch2b": (1, 512, 7, 7),
    "res5b_branch2c": (1, 2048, 7, 7),
    "res5b": (1, 2048, 7, 7),
    "res5c_branch2a": (1, 512, 7, 7),
    "res5c_branch2b": (1, 512, 7, 7),
    "res5c_branch2c": (1, 2048, 7, 7),
    "res5c": (1, 2048, 7, 7),
    "pool5": (1, 2048, 1, 1),
    "fc1000": (1, 1000),
    "prob": (1, 1000),
}

# SqueezeNet 1.1, 227x227. conv1 3x3/2: (227 - 3)/2 + 1 = 113; pool1 3x3/2:
# ceil(110/2) + 1 = 56; pool3: ceil(53/2) + 1 = 28; pool5: ceil(25/2) + 1 =
# 14; conv10 keeps 14 and pool10 is global. A fire module concatenates its two
# expands (1x1 and 3x3 pad 1: the same size).
SQUEEZENET_V1_1: dict[str, Shape] = {
    "data": (1, 3, 227, 227),
    "conv1": (1, 64, 113, 113),
    "pool1": (1, 64, 56, 56),
    "fire2/squeeze1x1": (1, 16, 56, 56),
    "fire2/expand1x1": (1, 64, 56, 56),
    "fire2/expand3x3": (1, 64, 56, 56),
    "fire2/concat": (1, 128, 56, 56),
    "fire3/squeeze1x1": (1, 16, 56, 56),
    "fire3/expand1x1": (1, 64, 56, 56),
    "fire3/expand3x3": (1, 64, 56, 56),
    "fire3/concat": (1, 128, 56, 56),
    "pool3": (1, 128, 28, 28),
    "fire4/squeeze1x1": (1, 32, 28, 28),
    "fire4/expand1x1": (1, 128, 28, 28),
    "fire4/expand3x3": (1, 128, 28, 28),
    "fire4/concat": (1, 256, 28, 28),
    "fire5/squeeze1x1": (1, 32, 28, 28),
    "fire5/expand1x1": (1, 128, 28, 28),
    "fire5/expand3x3": (1, 128, 28, 28),
    "fire5/concat": (1, 256, 28, 28),
    "pool5": (1, 256, 14, 14),
    "fire6/squeeze1x1": (1, 48, 14, 14),
    "fire6/expand1x1": (1, 192, 14, 14),
    "fire6/expand3x3": (1, 192, 14, 14),
    "fire6/concat": (1, 384, 14, 14),
    "fire7/squeeze1x1": (1, 48, 14, 14),
    "fire7/expand1x1": (1, 192, 14, 14),
    "fire7/expand3x3": (1, 192, 14, 14),
    "fire7/concat": (1, 384, 14, 14),
    "fire8/squeeze1x1": (1, 64, 14, 14),
    "fire8/expand1x1": (1, 256, 14, 14),
    "fire8/expand3x3": (1, 256, 14, 14),
    "fire8/concat": (1, 512, 14, 14),
    "fire9/squeeze1x1": (1, 64, 14, 14),
    "fire9/expand1x1": (1, 256, 14, 14),
    "fire9/expand3x3": (1, 256, 14, 14),
    "fire9/concat": (1, 512, 14, 14),
    "conv10": (1, 1000, 14, 14),
    "pool10": (1, 1000, 1, 1),
    "prob": (1, 1000, 1, 1),
}

# MobileNet v1, 224x224. conv1 3x3/2 pad 1: (224 + 2 - 3)/2 + 1 = 112; each
# stride-2 depthwise 3x3 pad 1 halves: (112 + 2 - 3)/2 + 1 = 56, then 28, 14,
# 7; stride-1 depthwise and the 1x1 separable convolutions keep the size;
# pool6 is global and fc7 a 1x1 convolution.
MOBILENET_V1: dict[str, Shape] = {
    "data": (1, 3, 224, 224),
    "conv1": (1, 32, 112, 112),
    "conv2_1/dw": (1, 32, 112, 112),
    "conv2_1/sep": (1, 64, 112, 112),
    "conv2_2/dw": (1, 64, 56, 56),
    "conv2_2/sep": (1, 128, 56, 56),
    "conv3_1/dw": (1, 128, 56, 56),
    "conv3_1/sep": (1, 128, 56, 56),
    "conv3_2/dw": (1, 128, 28, 28),
    "conv3_2/sep": (1, 256, 28, 28),
    "conv4_1/dw": (1, 256, 28, 28),
    "conv4_1/sep": (1, 256, 28, 28),
    "conv4_2/dw": (1, 256, 14, 14),
    "conv4_2/sep": (1, 512, 14, 14),
    "conv5_1/dw": (1, 512, 14, 14),
    "conv5_1/sep": (1, 512, 14, 14),
    "conv5_2/dw": (1, 512, 14, 14),
    "conv5_2/sep": (1, 512, 14, 14),
    "conv5_3/dw": (1, 512, 14, 14),
    "conv5_3/sep": (1, 512, 14, 14),
    "conv5_4/dw": (1, 512, 14, 14),
    "conv5_4/sep": (1, 512, 14, 14),
    "conv5_5/dw": (1, 512, 14, 14),
    "conv5_5/sep": (1, 512, 14, 14),
    "conv5_6/dw": (1, 512, 7, 7),
    "conv5_6/sep": (1, 1024, 7, 7),
    "conv6/dw": (1, 1024, 7, 7),
    "conv6/sep": (1, 1024, 7, 7),
    "pool6": (1, 1024, 1, 1),
    "fc7": (1, 1000, 1, 1),
    "prob": (1, 1000, 1, 1),
}

SHAPES: dict[str, dict[str, Shape]] = {
    "alexnet": ALEXNET,
    "caffenet": CAFFENET,
    "googlenet": GOOGLENET,
    "vgg16": VGG16,
    "resnet50": RESNET50,
    "squeezenet_v1_1": SQUEEZENET_V1_1,
    "mobilenet_v1": MOBILENET_V1,
}
