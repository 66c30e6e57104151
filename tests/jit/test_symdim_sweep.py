"""Every public functional argument that is a size, an axis, a count, a kernel/stride/padding or
a shape, given from ``x.shape`` inside a dumpable trace: recorded, checked on a second call,
dumped, loaded with `GraphInference` and run at another input shape, where the result equals the
eager function at that shape (the op keeps the size as an expression) or the run stops with
`ShapeGuardError` (the size is only a guard: each such case says why). Also the Python uses of
sizes (comparisons, ``len``, ``max``, ``math.prod``, ...) and module constructors given sizes."""
import inspect
import io
import math
import operator
import re

import numpy as np
import pytest

import megengine as mge
import megengine.functional as F
import megengine.module as M
from megengine.core import tensor_factory
from megengine.core._trace_option import SymDim, as_int, is_int
from megengine.core.tensor_utils import make_shape_tuple
from megengine.jit import TraceMismatchError, trace
from megengine.jit.shape_guards import ShapeGuardError
from megengine.utils.comp_graph_tools import GraphInference

RNG = np.random.default_rng(0)


def _data(*shape):
    return RNG.standard_normal(shape).astype("float32")


def _one(shape):
    return [_data(*shape)]


def _two(shape):
    return [_data(*shape), _data(*shape)]


def _classes(shape):  # (N, C) scores and N labels in [0, C)
    return [_data(*shape), RNG.integers(0, shape[1], size=shape[:1]).astype("int32")]


def _ints(shape):
    return [RNG.integers(0, 3, size=shape).astype("int32")]


def _rois(shape):  # an NCHW map and two rois (batch, x1, y1, x2, y2), one on the last image
    rois = np.array([[0, 0.5, 0.5, 3.0, 3.5], [shape[0] - 1, 1.0, 0.0, 4.0, 3.0]], "float32")
    return [_data(*shape), rois]


def _warp(shape):  # images and one mild perspective matrix per image
    mat = np.array([[1, 0.1, 0.5], [0.05, 1, 0.2], [0, 0, 1]], "float32")
    return [_data(*shape), np.tile(mat, (shape[0], 1, 1))]


def _boxes(shape):  # (N, 4) boxes x1 y1 x2 y2 and N scores
    corner = RNG.uniform(0, 10, size=(shape[0], 2)).astype("float32")
    size = RNG.uniform(1, 5, size=(shape[0], 2)).astype("float32")
    return [np.concatenate([corner, corner + size], 1), RNG.uniform(size=shape[:1]).astype(
        "float32")]


def _ctc(shape):  # (T, N, C) log-probabilities, input lengths, labels, label lengths
    t, n, c = shape
    pred = F.logsoftmax(mge.tensor(_data(*shape)), axis=2).numpy()
    return [pred, np.full((n,), t, "int32"), RNG.integers(1, c, size=(n, 2)).astype("int32"),
            np.full((n,), 2, "int32")]


W2 = _data(4, 2, 3, 3)  # conv weights, captured as constants
W1 = _data(4, 2, 3)
W3 = _data(4, 2, 3, 3, 3)
EMB = _data(5, 2)

FOLLOW = "follow"  # the op keeps the size as an expression: the dump runs at the new shape


def _case(fn, traced, other, expect=FOLLOW, make=_one):
    return fn, traced, other, expect, make


def _count(x):  # the number of elements of x, computed by ops (an int32 Tensor)
    return (x == x).astype("int32").sum()


def _deformable(x):
    d = x.shape[0]  # dilation = padding = d keeps the output H x W
    offset = F.zeros((x.shape[0], 18, x.shape[2], x.shape[3]))
    mask = F.ones((x.shape[0], 9, x.shape[2], x.shape[3]))
    return F.deformable_conv2d(x, mge.tensor(W2), offset, mask, padding=d, dilation=d)


def _region_restricted(x):
    rin = F.zeros((x.shape[0], x.shape[2], x.shape[3]), "int32")
    rout = F.zeros((x.shape[0], x.shape[2] - 2, x.shape[3] - 2), "int32")
    w = mge.tensor(W2[:, :1].reshape(2, 2, 1, 3, 3))
    return F.region_restricted_conv(x, w, rin, rout, groups=x.shape[1])


def _psroi(x, rois):
    p = x.shape[2] // 3
    return F.nn.deformable_psroi_pooling(x, rois, F.zeros((2, 2, p, p)), True, p, p, p, 2, 1.0)


AXIS_GUARD = "an axis decides which dims the op works on, which a program cannot recompute"
KERNEL_GUARD = "kernel, stride, padding and dilation fix the windows of a recorded op"
COUNT_GUARD = "the count fixes how many ops (or outputs) the Python code made"

# name (the function's name first) -> (function, traced shape, other shape, expectation, data)
CASES = {
    # ----- creation -----
    "eye(n)": _case(lambda x: x @ F.eye(x.shape[1]), (2, 3), (2, 4)),
    "eye(n, m)": _case(lambda x: x + F.eye(x.shape[0], x.shape[1]), (2, 3), (4, 5)),
    "eye(shape)": _case(lambda x: x + F.eye(x.shape), (2, 3), (4, 5)),
    "arange(stop)": _case(lambda x: x + F.arange(x.shape[1]), (2, 3), (2, 5)),
    "arange(start, stop, step)": _case(lambda x: x + F.arange(1, x.shape[1] * 2 + 1, 2),
                                       (2, 3), (2, 5)),
    "linspace(num)": _case(lambda x: x + F.linspace(0, 1, x.shape[1]), (2, 3), (2, 5)),
    "linspace(start, stop)": _case(  # (bounds from sizes: computed at each run, not floats)
        lambda x: x + F.linspace(x.shape[0], x.shape[1] * 2, 4), (2, 4), (3, 4)),
    "linspace(float bounds)": _case(  # (x.shape[0] * 0.5: a float size, computed too)
        lambda x: x + F.linspace(x.shape[0] * 0.5, x.shape[1] / 4, 4), (2, 4), (3, 4)),
    "full(shape)": _case(lambda x: x + F.full((x.shape[0], 1), 2.0), (2, 3), (4, 3)),
    "zeros(n)": _case(lambda x: x + F.zeros(x.shape[1]), (2, 3), (2, 5)),
    "ones(x.shape)": _case(lambda x: x + F.ones(x.shape), (2, 3), (4, 5)),
    "arange(stop) below start": _case(lambda x: F.arange(x.shape[1] - 3), (2, 5), (2, 2)),
    # sizes the program computes (Tensors): inputs of upstream's Fill (a constant broadcast to
    # the shape Tensor), read when the dump runs
    "zeros(computed n)": _case(lambda x: F.zeros(_count(x)), (2, 3), (4, 5)),
    "ones((x.shape[0], computed n))": _case(lambda x: x + F.ones((x.shape[0], _count(x[0]))),
                                            (2, 3), (4, 5)),
    "full(computed shape Tensor)": _case(
        # (F.concat: F.stack of 0-d tensors makes a (2, 1) tensor, as upstream 1.13's)
        lambda x: x + F.full(F.concat([_count(x[:, 0]), _count(x[0])]), 2.0, "int32"), (2, 3),
        (4, 5)),
    "arange(computed stop)": _case(lambda x: F.arange(_count(x[0]) - 3), (2, 5), (2, 2)),
    # ----- shapes and axes -----
    "reshape": _case(lambda x: F.reshape(x, (x.shape[0] * x.shape[1], -1)), (2, 3, 4),
                     (3, 5, 4)),
    "broadcast_to": _case(lambda x: F.broadcast_to(x[:1], (x.shape[0], x.shape[1])), (2, 3),
                          (4, 5)),
    "expand_dims(axis=ndim)": _case(lambda x: F.expand_dims(x, x.ndim) * 2, (2, 3), (4, 5)),
    "expand_dims(axis)": _case(lambda x: F.expand_dims(x, x.shape[0] - 1) * 2, (2, 3), (1, 3),
                               AXIS_GUARD),
    "add_axis(axis)": _case(lambda x: F.add_axis(x, x.shape[0] - 1) * 2, (2, 3), (1, 3),
                            AXIS_GUARD),
    "squeeze(axis)": _case(lambda x: F.squeeze(x, x.shape[1] - 3) * 2, (1, 3, 1), (1, 4, 1),
                           AXIS_GUARD),
    "remove_axis(axis)": _case(lambda x: F.remove_axis(x, x.shape[1] - 3) * 2, (1, 3, 1),
                               (1, 4, 1), AXIS_GUARD),
    "concat(axis=ndim - 1)": _case(lambda x: F.concat([x, x], axis=x.ndim - 1), (2, 3), (4, 5)),
    "concat(axis)": _case(lambda x: F.concat([x, x], axis=x.shape[0] - 1), (2, 3), (1, 3),
                          AXIS_GUARD),
    "stack(axis)": _case(lambda x: F.stack([x, x], axis=x.shape[0] - 1), (2, 3), (1, 3),
                         AXIS_GUARD),
    "split(sections)": _case(lambda x: F.split(x, x.shape[1] // 2, axis=1)[0] * 2, (2, 4),
                             (2, 6), COUNT_GUARD),
    "split(at sizes)": _case(lambda x: F.split(x, [x.shape[1] // 2], axis=1)[1] * 2, (2, 4),
                             (2, 6)),
    "split(axis)": _case(lambda x: F.split(x, 2, axis=x.shape[0] - 1)[0] * 2, (2, 4), (3, 4),
                         AXIS_GUARD),
    "flatten(start_axis=ndim - 2)": _case(lambda x: F.flatten(x, x.ndim - 2), (2, 3, 4),
                                          (3, 5, 4)),
    "flatten(start_axis, end_axis)": _case(lambda x: F.flatten(x, x.shape[0] - 1, x.shape[0]),
                                           (1, 3, 4), (2, 3, 4), AXIS_GUARD),
    "flip(axis)": _case(lambda x: F.flip(x, x.shape[0] - 1), (2, 3), (1, 3), AXIS_GUARD),
    "gather(axis)": _case(lambda x: F.gather(x, x.shape[0] - 1, F.zeros(x.shape, "int32")),
                          (2, 3), (1, 3), AXIS_GUARD),
    "scatter(axis)": _case(lambda x: F.scatter(x * 1, x.shape[0] - 1, F.zeros((1, 1), "int32"),
                                               x[:1, :1]), (2, 3), (1, 3), AXIS_GUARD),
    # (upstream 1.13 measured: its dump repeats by the count at the shape it runs at; earlier
    # versions of this fork guarded the count)
    "repeat(repeats)": _case(lambda x: F.repeat(x, x.shape[1], axis=1), (2, 3), (2, 4)),
    "repeat(axis)": _case(lambda x: F.repeat(x, 2, axis=x.shape[0] - 1), (2, 3), (1, 3),
                          AXIS_GUARD),
    "tile(reps)": _case(lambda x: F.tile(x, (1, x.shape[0])), (2, 3), (3, 3)),
    "roll(shift)": _case(lambda x: F.roll(x, x.shape[1] // 2, axis=1), (2, 4), (2, 6),
                         "Roll keeps its shift as a plain int"),
    "roll(axis)": _case(lambda x: F.roll(x, 1, axis=x.shape[0] - 1), (2, 4), (1, 4),
                        AXIS_GUARD),
    "transpose(pattern)": _case(lambda x: F.transpose(x, (x.shape[0] - 1, 2 - x.shape[0])),
                                (2, 3), (1, 3)),
    "dimshuffle(pattern)": _case(lambda x: F.dimshuffle(x, (x.shape[0] - 1, 2 - x.shape[0])),
                                 (2, 3), (1, 3)),
    "swapaxes(axis1, axis2)": _case(lambda x: F.swapaxes(x, 0, x.shape[0] - 1), (2, 3), (1, 3),
                                    AXIS_GUARD),
    "cumsum(axis)": _case(lambda x: F.cumsum(x, x.shape[0] - 1), (2, 3), (1, 3), AXIS_GUARD),
    "diag(k)": _case(lambda x: F.diag(x, k=x.shape[1] - 3), (3, 3), (3, 4),
                     "Diag keeps its offset as a plain int"),
    "indexing_one_hot(axis)": _case(
        lambda x: F.indexing_one_hot(x, F.zeros(x.shape[0], "int32"), axis=x.shape[0] - 1),
        (2, 2), (1, 2), AXIS_GUARD),
    "one_hot(num_classes)": _case(lambda x: F.one_hot(x, x.shape[1] + 2), (2, 3), (2, 4),
                                  make=_ints),
    "topk(k)": _case(lambda x: F.topk(x, x.shape[1] // 2)[0], (2, 4), (2, 6)),
    "top_k(k, kth_only)": _case(lambda x: F.top_k(x, x.shape[1] // 2, kth_only=True)[1],
                                (2, 4), (2, 6)),
    "sort(axis)": _case(lambda x: F.sort(x, axis=x.shape[0] - 1)[0], (2, 3), (1, 3),
                        AXIS_GUARD),
    "argsort(descending)": _case(lambda x: F.argsort(x, descending=True) * x.shape[0],
                                 (2, 3), (4, 3)),
    "argmax(axis)": _case(lambda x: F.argmax(x, x.shape[0] - 1), (2, 3), (1, 3), AXIS_GUARD),
    "argmin(axis)": _case(lambda x: F.argmin(x, x.shape[0] - 1), (2, 3), (1, 3), AXIS_GUARD),
    "sum(axis)": _case(lambda x: F.sum(x, axis=x.shape[0] - 1), (2, 3), (1, 3)),
    "mean(axes)": _case(lambda x: F.mean(x, axis=(0, x.shape[0] - 1)), (2, 3, 4), (3, 3, 4)),
    "max(axis)": _case(lambda x: F.max(x, x.shape[0] - 1), (2, 3), (1, 3)),
    "min(axis)": _case(lambda x: F.min(x, x.shape[0] - 1, keepdims=True), (2, 3), (1, 3)),
    "prod(axis)": _case(lambda x: F.prod(x, x.shape[0] - 1), (2, 3), (1, 3)),
    "std(axis)": _case(lambda x: F.std(x, x.shape[0] - 1), (2, 3), (1, 3)),
    "var(axis)": _case(lambda x: F.var(x, x.shape[0] - 1), (2, 3), (1, 3)),
    "norm(axis)": _case(lambda x: F.norm(x, axis=x.shape[0] - 1), (2, 3), (1, 3)),
    "normalize(axis)": _case(lambda x: F.normalize(x, axis=x.shape[0] - 1), (2, 3), (1, 3)),
    "logsumexp(axis)": _case(lambda x: F.logsumexp(x, x.shape[0] - 1), (2, 3), (1, 3)),
    "softmax(axis)": _case(lambda x: F.softmax(x, x.shape[0] - 1), (2, 3), (1, 3), AXIS_GUARD),
    "logsoftmax(axis)": _case(lambda x: F.logsoftmax(x, x.shape[0] - 1), (2, 3), (1, 3),
                              AXIS_GUARD),
    "cross(axis)": _case(lambda x: F.cross(x, x * 2 + 1, axis=x.shape[0] - 1), (2, 3, 3),
                         (1, 3, 3), AXIS_GUARD),
    "shapeof(axis)": _case(lambda x: x * F.shapeof(x, x.shape[0] - 1).astype("float32"),
                           (2, 3), (1, 3), "the axis picks which size is read"),
    "pad(pad_width)": _case(lambda x: F.pad(x, ((0, 0), (x.shape[0], 0))), (2, 3), (3, 3),
                            "Pad keeps its widths as plain ints"),
    # ----- nn -----
    "max_pool2d(kernel_size)": _case(lambda x: F.max_pool2d(x, x.shape[2] // 4), (1, 2, 8, 8),
                                     (1, 2, 12, 12), KERNEL_GUARD),
    "avg_pool2d(stride, padding)": _case(
        lambda x: F.avg_pool2d(x, 2, stride=x.shape[2] // 4, padding=x.shape[0] - 1),
        (1, 2, 8, 8), (2, 2, 12, 12), KERNEL_GUARD),
    "adaptive_avg_pool2d(oshp)": _case(
        lambda x: F.adaptive_avg_pool2d(x, (x.shape[2] // 2, x.shape[3] // 2)), (1, 2, 8, 6),
        (2, 2, 10, 4)),
    "adaptive_max_pool2d(oshp)": _case(lambda x: F.adaptive_max_pool2d(x, x.shape[2] // 2),
                                       (1, 2, 8, 8), (2, 2, 10, 10)),
    "conv1d(stride)": _case(lambda x: F.conv1d(x, mge.tensor(W1), stride=x.shape[0]),
                            (1, 2, 8), (2, 2, 8), KERNEL_GUARD),
    "conv2d(stride, padding, dilation)": _case(
        lambda x: F.conv2d(x, mge.tensor(W2), stride=x.shape[2] // 4, padding=x.shape[0],
                           dilation=x.shape[0]), (1, 2, 8, 8), (2, 2, 12, 12), KERNEL_GUARD),
    "conv2d(groups)": _case(lambda x: F.conv2d(x, mge.tensor(W2[:, :1]), groups=x.shape[1]),
                            (1, 2, 6, 6), (3, 2, 5, 7)),
    "conv3d(padding)": _case(lambda x: F.conv3d(x, mge.tensor(W3), padding=x.shape[0]),
                             (1, 2, 4, 4, 4), (2, 2, 4, 4, 4), KERNEL_GUARD),
    "conv_transpose2d(output_padding)": _case(
        lambda x: F.conv_transpose2d(x, mge.tensor(W2.transpose(1, 0, 2, 3)), stride=2,
                                     output_padding=x.shape[0] - 1), (2, 2, 5, 5), (1, 2, 5, 5),
        KERNEL_GUARD),
    "conv_transpose3d(stride)": _case(
        lambda x: F.conv_transpose3d(x, mge.tensor(W3.transpose(1, 0, 2, 3, 4)),
                                     stride=x.shape[0]), (1, 2, 3, 3, 3), (2, 2, 3, 3, 3),
        KERNEL_GUARD),
    "deformable_conv2d(padding, dilation)": _case(_deformable, (1, 2, 5, 5), (2, 2, 5, 5),
                                                  KERNEL_GUARD),
    "local_conv2d(stride)": _case(
        lambda x: F.local_conv2d(x, mge.tensor(_LOCAL_W), stride=x.shape[0]), (1, 2, 6, 6),
        (2, 2, 6, 6), KERNEL_GUARD),
    "region_restricted_conv(groups)": _case(_region_restricted, (1, 2, 5, 5), (2, 2, 6, 4)),
    "pixel_shuffle(upscale_factor)": _case(lambda x: F.pixel_shuffle(x, x.shape[1] // 4),
                                           (1, 4, 2, 2), (1, 16, 2, 2),
                                           "the factor is checked against the channels"),
    "interpolate(size=Tensor(x.shape[2:]) * 2)": _case(
        lambda x: F.nn.interpolate(x, size=mge.tensor(x.shape[2:]) * 2), (1, 2, 3, 4),
        (2, 2, 5, 3)),
    "interpolate(size=int)": _case(lambda x: F.nn.interpolate(x, size=x.shape[2] * 2),
                                   (1, 2, 3, 3), (2, 2, 5, 5)),
    "interpolate(scale_factor)": _case(
        lambda x: F.nn.interpolate(x, scale_factor=x.shape[0] + 1.0), (1, 2, 3, 3),
        (2, 2, 3, 3)),
    "sliding_window(kernel_size)": _case(lambda x: F.sliding_window(x, x.shape[0] + 1),
                                         (1, 2, 5, 5), (2, 2, 5, 5), KERNEL_GUARD),
    "sliding_window_transpose(output_size)": _case(
        lambda x: F.sliding_window_transpose(F.sliding_window(x, 2), (x.shape[2], x.shape[3]),
                                             2), (1, 2, 5, 5), (2, 2, 6, 4),
        "the output size fixes the windows' positions"),
    "group_norm(num_groups)": _case(
        lambda x: F.nn.group_norm(x, x.shape[1] // 2, affine=False), (1, 4, 3, 3),
        (2, 8, 3, 3)),
    "instance_norm": _case(lambda x: F.nn.instance_norm(x, affine=False) * x.shape[1],
                           (1, 4, 3, 3), (2, 6, 3, 3)),
    "layer_norm(normalized_shape=x.shape[-1:])": _case(
        lambda x: F.nn.layer_norm(x, x.shape[-1:], affine=False), (2, 3, 4), (3, 3, 5)),
    "layer_norm(normalized_shape=x.shape[-1])": _case(
        lambda x: F.nn.layer_norm(x, x.shape[-1], affine=False), (2, 3, 4), (3, 3, 5)),
    "general_norm(normalized_axis)": _case(
        lambda x: F.nn.general_norm(x, x.shape[0] - 1, affine=False), (2, 3, 4), (1, 3, 4),
        AXIS_GUARD),
    "local_response_norm(kernel_size)": _case(
        lambda x: F.nn.local_response_norm(x, kernel_size=x.shape[0] * 2 + 1), (1, 4, 3, 3),
        (2, 4, 3, 3), "the kernel size is a loop count"),
    "correlation(max_displacement, pad_size)": _case(
        lambda a, b: F.vision.correlation(a, b, max_displacement=a.shape[2] // 4,
                                          pad_size=a.shape[2] // 4), (1, 2, 4, 4), (1, 2, 8, 8),
        "the displacement is the output's channel count, a loop count", _two),
    "roi_align(output_shape)": _case(
        lambda x, r: F.vision.roi_align(x, r, (x.shape[2] // 2, x.shape[3] // 2)), (2, 2, 6, 6),
        (3, 2, 8, 8), "the sampling grid is built from the output size", _rois),
    "roi_align(sample_points)": _case(
        lambda x, r: F.vision.roi_align(x, r, (2, 2), sample_points=x.shape[0]), (2, 2, 6, 6),
        (3, 2, 6, 6), "the sampling grid is built from the count", _rois),
    "roi_pooling(output_shape)": _case(
        lambda x, r: F.vision.roi_pooling(x, r, (x.shape[2] // 2, x.shape[3] // 2)),
        (2, 2, 6, 6), (3, 2, 8, 8), "the bins are built from the output size", _rois),
    "deformable_psroi_pooling(part_size, pooled_h, pooled_w)": _case(
        _psroi, (2, 2, 6, 6), (3, 2, 9, 9), "the bins are built from the sizes", _rois),
    "warp_perspective(out_shape)": _case(
        lambda x, m: F.vision.warp_perspective(x, m, (x.shape[2], x.shape[3])), (1, 2, 4, 5),
        (2, 2, 6, 3), make=_warp),
    "warp_affine(out_shape)": _case(
        lambda x, m: F.vision.warp_affine(x, m[:, :2], (x.shape[1], x.shape[2])), (1, 4, 5, 2),
        (2, 6, 3, 2), make=_warp),
    "nms(max_output)": _case(lambda b, s: F.vision.nms(b, s, 0.5, max_output=b.shape[0] // 2),
                             (6, 4), (8, 4), "the output's length is the count", _boxes),
    "cross_entropy(axis)": _case(lambda x, y: F.nn.cross_entropy(x, y, axis=x.shape[0] - 1),
                                 (2, 3), (1, 3), AXIS_GUARD, _classes),
    "cross_entropy_with_softmax(axis)": _case(
        lambda x, y: F.cross_entropy_with_softmax(x, y, axis=x.shape[0] - 1), (2, 3), (1, 3),
        AXIS_GUARD, _classes),
    "nll_loss(axis)": _case(lambda x, y: F.nll_loss(F.logsoftmax(x, 1), y,
                                                    axis=x.shape[0] - 1), (2, 3), (1, 3),
                            AXIS_GUARD, _classes),
    "topk_accuracy(topk)": _case(lambda x, y: F.topk_accuracy(x, y, topk=x.shape[1] - 1),
                                 (2, 3), (2, 4), "k is read to slice the hits", _classes),
    "accuracy(topk)": _case(lambda x, y: F.accuracy(x, y, topk=(1, x.shape[1] - 1))[1], (2, 3),
                            (2, 4), "k is read to slice the hits", _classes),
    "embedding(padding_idx)": _case(lambda x: F.embedding(x, mge.tensor(EMB),
                                                          padding_idx=x.shape[1]), (2, 3),
                                    (2, 4), "the padding row is a fixed row", _ints),
    "ctc_loss(blank)": _case(lambda p, pl, y, yl: F.nn.ctc_loss(p, pl, y, yl,
                                                                blank=p.shape[1] - 2),
                             (4, 2, 3), (4, 3, 3), "the blank is a fixed class index", _ctc),
    "random.normal(size)": _case(lambda x: x + 0 * mge.random.normal(size=(x.shape[0], 1)),
                                 (2, 3), (4, 3)),
    "norm(ord)": _case(lambda x: F.norm(x, ord=x.shape[0], axis=1), (2, 3), (1, 3),
                       "the order is a number of the formula"),
    # ----- Tensor methods, indexing, 0.x names -----
    "x[n - 1]": _case(lambda x: x[x.shape[0] - 1] * 2, (2, 3), (4, 3)),
    "x[n - 1, :2]": _case(lambda x: x[x.shape[0] - 1, :2] * 2, (2, 3), (4, 5)),
    "x[[0, n - 1]]": _case(lambda x: x[[0, x.shape[0] - 1]] * 2, (2, 3), (4, 5),
                           "a list index is an index array made on the host"),
    "x[n - 1] = 0": _case(lambda x: _set_last_row(x * 1), (2, 3), (4, 5)),
    "Tensor.sum(axis)": _case(lambda x: x.sum(x.shape[0] - 1), (2, 3), (1, 3)),
    "Tensor.transpose(pattern)": _case(lambda x: x.transpose(x.shape[0] - 1, 2 - x.shape[0]),
                                       (2, 3), (1, 3)),
    "Tensor.broadcast(n) (0.x)": _case(lambda x: x.sum(0).reshape(1).broadcast(x.shape[0]),
                                       (2, 1), (4, 1)),
    "tensor_factory.ones(n) (0.x)": _case(
        lambda x: x + tensor_factory.ones(x.shape[1]).astype("float32"), (2, 3), (4, 5)),
    "make_shape_tuple": _case(
        lambda x: x.reshape(make_shape_tuple([x.shape[0], [x.shape[1] * x.shape[2]]])),
        (2, 3, 4), (4, 5, 2)),
    "add_axis(axes) (0.x)": _case(lambda x: F.add_axis(x, [0, x.shape[0] - 1]) * 2, (2, 3),
                                  (1, 3), AXIS_GUARD),
}


def _set_last_row(y):
    y[y.shape[0] - 1] = 0
    return y
_LOCAL_W = _data(4, 4, 2, 3, 3, 4)  # local_conv2d: (OH, OW, IC, KH, KW, OC) at stride 1 on 6x6


def _dumped(fn, traced, make):
    f = trace(fn, symbolic=True, capture_as_const=True)
    arrays = make(traced)
    for _ in range(2):  # the first call records, the second is checked against the record
        f(*[mge.tensor(a) for a in arrays])
    buf = io.BytesIO()
    f.dump(buf, arg_names=[f"x{i}" for i in range(len(arrays))])
    buf.seek(0)
    return GraphInference(buf)


def _eager(fn, arrays):
    out = fn(*[mge.tensor(a) for a in arrays])
    return [o.numpy() for o in (out if isinstance(out, (tuple, list)) else [out])]


def _assert_same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(CASES))
def test_a_size_from_a_shape_follows_the_input_or_guards_it(name):
    fn, traced, other, expect, make = CASES[name]
    program = _dumped(fn, traced, make)
    again = make(traced)  # at the traced shape the dump runs whatever the sizes became
    _assert_same(list(program.run(*again).values()), _eager(fn, again))
    arrays = make(other)
    if expect == FOLLOW:
        _assert_same(list(program.run(*arrays).values()), _eager(fn, arrays))
    else:
        with pytest.raises(ShapeGuardError) as e:
            program.run(*arrays)
        assert "test_symdim_sweep.py:" in str(e.value), expect  # (names the user's line)


# every public functional name with such an argument is covered above, or says why not
_SIZE_ARGS = {
    "axis", "axisa", "axisb", "axisc", "axis1", "axis2", "shape", "target_shape", "size", "num",
    "N", "M", "k", "topk", "num_classes", "kernel_size", "stride", "padding", "dilation",
    "groups", "output_padding", "oshp", "out_shape", "output_shape", "upscale_factor", "repeats",
    "reps", "shift", "pattern", "nsplits_or_sections", "start_axis", "end_axis",
    "normalized_shape", "normalized_axis", "num_groups", "max_displacement", "pad_size",
    "pad_width", "max_output", "output_size", "sample_points", "padding_idx", "stop",
    "scale_factor", "stride1", "stride2", "part_size", "pooled_h", "pooled_w",
    "sample_per_part", "embed_dim", "num_heads", "blank"}
NOT_SWEPT = {
    "multi_head_attention": "embed_dim and num_heads must match the packed io_weight_bias, "
                            "whose sizes are fixed; M.MultiHeadAttention's constructor is "
                            "checked below",
    "acc_sum": "an array helper of the engine (float16 sums in float32), not a user function",
    "t_unbroadcast": "a gradient helper of the engine, not a user function",
    "unbroadcast": "a gradient helper of the engine, not a user function",
    "conv_bias_activation": "F.quantized's convolution of quantized tensors, in F.nn too as "
                            "upstream's module holds it; the sweep covers the float ops",
}


def test_the_sweep_covers_every_functional_name_with_a_size_argument():
    covered = {re.match(r"[\w.]+", n).group(0).rsplit(".", 1)[-1] for n in CASES}
    missing = []
    for mod in (F, F.nn, F.vision):
        for name, f in vars(mod).items():
            if name.startswith("_") or not inspect.isfunction(f):
                continue
            if set(inspect.signature(f).parameters) & _SIZE_ARGS and name not in covered \
                    and name not in NOT_SWEPT:
                missing.append(f"{mod.__name__}.{name}")
    assert missing == []


# ----- Python's own uses of sizes: each behaves as the int would (an expression or a guard) ---

def _cmp_zero(x):
    return x * 2 if x.shape[0] == 0 else x + 1


def _shape_eq(x):
    return x * 2 if x.shape == (2, 3) else x + 1


def _rank(x):
    return x.reshape(x.shape[0], -1) * len(x.shape)


def _in_tuple(x):
    return x * 2 if x.shape[-1] in (3, 4) else x + 1


def _python_max(x):
    return x + F.zeros((max(x.shape), 1))[: x.shape[0]]


def _python_sum(x):
    return F.zeros(sum(x.shape)) + x.reshape(-1)[:1]


def _math_prod(x):
    return x.reshape(math.prod(x.shape)) * 2


def _numpy_prod(x):
    return x.reshape(np.prod(x.shape)) * 2


def _min_hw(x):
    n, c, h, w = x.shape
    return F.adaptive_avg_pool2d(x, min(h, w))


def _divmod(x):
    q, r = divmod(x.shape[1], 2)
    return F.concat([x[:, :q], x[:, :r + 1]], axis=1)


def _abs(x):
    return x[:, : abs(x.shape[1] - 1)] * 2


def _sizes_compared(x):
    return x * 2 if x.shape[0] < x.shape[1] else x + 1


def _list_index(x):
    return x * [1.0, 2.0, 3.0, 4.0, 5.0][x.shape[0]]


def _dict_key(x):
    return x * {2: 1.0, 3: 5.0}.get(x.shape[0], -1.0)


def _slice_step(x):
    return x[:: x.shape[0]] * 2


def _floordiv_index(x):
    return F.reshape(x, (x.shape[0] // 2, 2 * x.shape[1]))


# name -> (function, traced shape, a shape it follows or where its guard holds, a shape where
#          the guard fails or None where it is an expression)
PYTHON_USES = {
    "x.shape[0] == 0": (_cmp_zero, (2, 3), (5, 3), (0, 3)),
    "x.shape == (2, 3)": (_shape_eq, (2, 3), (2, 3), (3, 3)),
    "len(x.shape)": (_rank, (2, 3, 4), (5, 3, 2), None),
    "x.shape[-1] in (3, 4)": (_in_tuple, (2, 3), (5, 3), (2, 4)),  # (as ints: == 3 first)
    "max(x.shape)": (_python_max, (2, 3), (1, 3), (4, 3)),
    "sum(x.shape)": (_python_sum, (2, 3), (4, 5), None),
    "math.prod(x.shape)": (_math_prod, (2, 3), (4, 5), None),
    "np.prod(x.shape)": (_numpy_prod, (2, 3), (4, 5), None),
    "min(h, w)": (_min_hw, (1, 2, 4, 6), (2, 2, 5, 8), (1, 2, 6, 4)),
    "divmod": (_divmod, (2, 5), (3, 7), None),
    "abs": (_abs, (2, 5), (3, 7), None),
    "a < b of two sizes": (_sizes_compared, (2, 3), (1, 4), (3, 3)),
    "a size as a list index": (_list_index, (2, 3), (2, 4), (3, 3)),
    "a size as a dict key": (_dict_key, (2, 3), (2, 5), (3, 3)),
    "a size as a slice step": (_slice_step, (2, 3), (3, 4), None),  # (GetItem keeps it)
    "x.shape[0] // 2 in a shape": (_floordiv_index, (4, 3), (6, 5), None),
}


@pytest.mark.parametrize("name", list(PYTHON_USES))
def test_python_uses_of_sizes_behave_as_ints_in_a_dump(name):
    fn, traced, ok, bad = PYTHON_USES[name]
    program = _dumped(fn, traced, _one)
    arrays = _one(ok)
    _assert_same(list(program.run(*arrays).values()), _eager(fn, arrays))
    if bad is not None:
        with pytest.raises(ShapeGuardError):
            program.run(*_one(bad))


def test_is_int_and_as_int_take_ints_and_sizes_and_refuse_the_rest():
    seen = {}

    def fn(x):
        n = x.shape[0]
        seen["checks"] = (is_int(n), is_int(n * 2), is_int(n / 2), is_int(3), is_int(np.int64(3)),
                          is_int(2.0), is_int("2"), is_int(None))
        seen["value"] = (type(as_int(n)), as_int(n), operator.index(n + 1))
        with pytest.raises(TypeError, match="cannot be interpreted as an integer"):
            as_int(n * 1.5)
        with pytest.raises(TypeError):
            as_int(2.0)
        return x * 2

    program = _dumped(fn, (2, 3), _one)
    assert seen["checks"] == (True, True, False, True, True, False, False, False)
    assert seen["value"] == (int, 2, 3)
    with pytest.raises(ShapeGuardError, match="as an int"):  # as_int read the batch: a guard
        program.run(_data(3, 3))


# ----- module constructors given sizes inside a traced function -----

CTORS = {
    "Linear": lambda x: M.Linear(x.shape[1], 4),
    "Conv1d": lambda x: M.Conv1d(x.shape[1], 4, x.shape[0] + 1, stride=x.shape[0],
                                 padding=x.shape[0]),
    "Conv2d": lambda x: M.Conv2d(x.shape[1], 4, x.shape[0] + 1, stride=x.shape[0],
                                 padding=x.shape[0], dilation=x.shape[0],
                                 groups=x.shape[1] // 2),
    "Conv3d": lambda x: M.Conv3d(x.shape[1], 4, x.shape[0] + 1),
    "ConvTranspose2d": lambda x: M.ConvTranspose2d(x.shape[1], 4, (x.shape[0] + 1, 3)),
    "ConvTranspose3d": lambda x: M.ConvTranspose3d(x.shape[1], 4, x.shape[0] + 1),
    "LocalConv2d": lambda x: M.LocalConv2d(x.shape[1], 4, x.shape[2], x.shape[3], 3),
    "DeformableConv2d": lambda x: M.DeformableConv2d(x.shape[1], 4, x.shape[0] + 1),
    "ConvBn2d": lambda x: M.ConvBn2d(x.shape[1], 4, x.shape[0] + 1),
    "BatchNorm2d": lambda x: M.BatchNorm2d(x.shape[1]),
    "GroupNorm": lambda x: M.GroupNorm(x.shape[0], x.shape[1]),
    "InstanceNorm": lambda x: M.InstanceNorm(x.shape[1]),
    "LayerNorm(int)": lambda x: M.LayerNorm(x.shape[-1]),
    "LayerNorm(shape)": lambda x: M.LayerNorm(x.shape[-2:]),
    "GeneralNorm": lambda x: M.GeneralNorm(x.shape[-1], normalized_axis=x.shape[0] + 1),
    "LocalResponseNorm": lambda x: M.LocalResponseNorm(x.shape[0] * 2 + 1),
    "Embedding": lambda x: M.Embedding(x.shape[1], 3),
    "MaxPool2d": lambda x: M.MaxPool2d(x.shape[0] + 1, stride=x.shape[0],
                                       padding=x.shape[0] - 1),
    "AvgPool2d": lambda x: M.AvgPool2d(x.shape[0] + 1),
    "AdaptiveAvgPool2d": lambda x: M.AdaptiveAvgPool2d((x.shape[2] // 2, x.shape[3] // 2)),
    "PixelShuffle": lambda x: M.PixelShuffle(x.shape[0] * 2),
    "SlidingWindow": lambda x: M.SlidingWindow(x.shape[0] + 1),
    "RNN": lambda x: M.RNN(x.shape[1], 4, num_layers=x.shape[0]),
    "LSTM": lambda x: M.LSTM(x.shape[1], x.shape[0] * 2),
    "LSTMCell": lambda x: M.LSTMCell(x.shape[1], 4),
    "MultiHeadAttention": lambda x: M.MultiHeadAttention(x.shape[1], x.shape[0]),
    "PReLU": lambda x: M.PReLU(x.shape[1]),
}


def test_module_constructors_take_sizes_from_shapes_as_their_values():
    made = {}

    def fn(x):
        for name, ctor in CTORS.items():
            made[name] = ctor(x)
        return x * 2

    f = trace(fn, symbolic=True, capture_as_const=True)
    f(mge.tensor(_data(2, 4, 6, 6)))  # records: no constructor refuses a size
    want = {name: ctor(mge.tensor(_data(2, 4, 6, 6))) for name, ctor in CTORS.items()}
    for name, m in made.items():  # the same layer as one made from the ints
        assert m._module_info_string() == want[name]._module_info_string(), name
        assert {k: v.shape for k, v in m.state_dict().items()} == \
            {k: v.shape for k, v in want[name].state_dict().items()}, name
    # each call makes fresh parameters: a checked call differs from the record, as it should
    with pytest.raises(TraceMismatchError):
        f(mge.tensor(_data(2, 4, 6, 6)))


def test_bad_int_arguments_keep_their_errors():
    x = mge.tensor(_data(2, 3))
    with pytest.raises(TypeError, match="axis must be an int, got float"):
        F.concat([x, x], axis=1.0)
    with pytest.raises(ValueError, match="max_displacement must be an int >= 0, got 1.5"):
        F.vision.correlation(x.reshape(1, 1, 2, 3), x.reshape(1, 1, 2, 3), max_displacement=1.5)
    with pytest.raises(ValueError, match="kernel_size must be an int >= 1, got 0"):
        F.nn.local_response_norm(x.reshape(1, 2, 3, 1), kernel_size=0)
    with pytest.raises(ValueError, match="kernel_size must be an int >= 1"):
        M.Conv2d(2, 4, 0)
    with pytest.raises(ValueError, match="input_size must be an int >= 1, got 2.0"):
        M.RNNCell(2.0, 4)
    assert not isinstance(SymDim(2, 2, None), int)  # (why the helpers exist)
