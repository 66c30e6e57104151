"""Makes the upstream ``.mge`` files that tests/jit/test_upstream_mge.py reads, with upstream's
own outputs for them.

It needs a real upstream MegEngine 1.13 (Python 3.10; this fork cannot run it). Run it from a
directory where the fork is not importable, e.g.::

    cd /tmp && PYTHONPATH=/path/to/upstream/site-packages python3.10 \\
        /path/to/tests/data/upstream_mge/make.py /path/to/tests/data/upstream_mge

For each model NAME it writes NAME.mge (``trace.dump`` with the options listed in MODELS) and
NAME.npz: the inputs (``in_<name>``) and the outputs upstream's loader (`GraphInference`)
computes from the file (``out_<k>``) at the traced batch size, upstream's metadata, and, for files that run at other shapes, ``in2_<name>`` / ``out2_<k>`` at another batch size.
"""
import os
import sys

import numpy as np

import megengine as mge
import megengine.functional as F
import megengine.module as M
from megengine.jit import trace
from megengine.utils.comp_graph_tools import GraphInference
from megengine.utils.network import Network


class CNN(M.Module):  # convolutions (groups, stride, dilation), BN in eval, pooling, linear
    def __init__(self):
        super().__init__()
        self.c1 = M.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = M.BatchNorm2d(8)
        self.c2 = M.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4, bias=False)
        self.fc = M.Linear(8 * 2 * 2, 5)

    def forward(self, x):
        x = F.relu(self.bn(self.c1(x)))
        x = F.max_pool2d(x, 2)
        x = F.avg_pool2d(self.c2(x), 2, stride=1, padding=1)
        x = F.adaptive_avg_pool2d(x, (2, 2))
        return F.softmax(self.fc(F.flatten(x, 1)), axis=1)


class Block(M.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = M.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = M.BatchNorm2d(cout)
        self.c2 = M.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = M.BatchNorm2d(cout)
        self.down = (M.Sequential(M.Conv2d(cin, cout, 1, stride, bias=False), M.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else None)

    def forward(self, x):
        y = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
        return F.relu(y + (self.down(x) if self.down is not None else x))


class ResNet(M.Module):
    def __init__(self):
        super().__init__()
        self.stem = M.Conv2d(3, 4, 3, 1, 1)
        self.l1 = Block(4, 4, 1)
        self.l2 = Block(4, 8, 2)
        self.fc = M.Linear(8, 4)

    def forward(self, x):
        x = self.l2(self.l1(F.relu(self.stem(x))))
        return self.fc(F.flatten(F.adaptive_max_pool2d(x, 1), 1))


class MobileBlock(M.Module):  # depthwise convolution, relu6, hswish
    def __init__(self):
        super().__init__()
        self.pw = M.Conv2d(4, 12, 1)
        self.dw = M.Conv2d(12, 12, 3, padding=1, groups=12)
        self.bn = M.BatchNorm2d(12)
        self.out = M.Conv2d(12, 4, 1)

    def forward(self, x):
        y = F.relu6(self.pw(x))
        y = F.hswish(self.bn(self.dw(y)))
        return x + self.out(y), F.sigmoid(y).mean(axis=(2, 3))


class MLP(M.Module):  # dropout in eval mode, elementwise activations
    def __init__(self):
        super().__init__()
        self.a = M.Linear(6, 16)
        self.drop = M.Dropout(0.3)
        self.b = M.Linear(16, 3)

    def forward(self, x):
        h = self.drop(F.gelu(self.a(x)))
        h = F.tanh(h) * F.exp(-F.abs(h)) + F.leaky_relu(h, 0.1)
        return self.b(h), F.logsumexp(h, axis=1), F.max(h, axis=1), h.sum(axis=1, keepdims=True)


class Transformer(M.Module):  # layer norm, batched matmul, softmax, gelu, split/concat heads
    def __init__(self, d=8, heads=2):
        super().__init__()
        self.heads = heads
        self.ln1 = M.LayerNorm(d)
        self.qkv = M.Linear(d, 3 * d)
        self.proj = M.Linear(d, d)
        self.ln2 = M.LayerNorm(d)
        self.ff1 = M.Linear(d, 2 * d)
        self.ff2 = M.Linear(2 * d, d)

    def forward(self, x):
        n, t, d = x.shape
        q, k, v = F.split(self.qkv(self.ln1(x)), 3, axis=2)
        split = lambda a: a.reshape(n, t, self.heads, d // self.heads).transpose(0, 2, 1, 3)
        q, k, v = split(q), split(k), split(v)
        att = F.softmax(F.matmul(q, k.transpose(0, 1, 3, 2)) / (d // self.heads) ** 0.5, axis=-1)
        o = F.matmul(att, v).transpose(0, 2, 1, 3).reshape(n, t, d)
        x = x + self.proj(o)
        return x + self.ff2(F.gelu(self.ff1(self.ln2(x))))


class Misc(M.Module):  # shape manipulation, indexing, reductions, casts
    def forward(self, x, y):
        a = F.concat([x, y * 2], axis=1)[:, 1:5:2, None]
        b = F.expand_dims(x[0], 0).astype("float16").astype("float32")
        c = F.broadcast_to(F.squeeze(y[:, :1], 1).reshape(-1, 1), (x.shape[0], 4))
        d = F.clip(x, -0.5, 0.5) ** 2 + F.maximum(x, y) - F.minimum(x, 0.1)
        e = F.transpose(d, (1, 0)).reshape(4, -1)
        return a, b + c, e.prod(axis=0), F.argmax(x, axis=1), F.mean(x, axis=0)


class Ops(M.Module):  # operators of dumps without optimize_for_inference, indexing, sorting
    def __init__(self):
        super().__init__()
        self.bn = M.BatchNorm2d(2)
        self.up = M.ConvTranspose2d(2, 2, 2, stride=2)

    def forward(self, x):
        y = self.up(self.bn(x))  # BatchNorm stays an operator without optimize_for_inference
        mask = (y > 0) & ~(y > 1) | (y < -1) ^ (y < -2)
        z = F.where(mask, y, -y).reshape(x.shape[0], -1)
        vals, idx = F.topk(z, 3, descending=True)
        srt, _ = F.sort(z[:, :5], descending=True)
        padded = F.nn.pad(x, ((0, 0), (0, 0), (1, 0), (0, 2)))
        big = F.vision.interpolate(x, scale_factor=2)  # (bilinear; its size computed in-graph)
        hot = F.one_hot(idx[:, 0] % 4, 4)
        w = F.copy(z)
        w[:, idx[0, :2]] = 0.0  # (set by an index vector)
        taken, _ = F.cond_take(z > 0.5, z)
        return (vals, idx, srt, F.cumsum(z, 1)[:, [0, 2, 4]], padded, z[0, 0] + F.dot(z[0], z[1]),
                F.sum(z), big, hot, w, taken)


class Sizes(M.Module):  # sizes used as data: a mean over the batch, a float scale of a size
    def forward(self, x):
        return x.sum(0) / x.shape[0] + x * (x.shape[1] * 0.5)


class SetSub(M.Module):  # slice assignment (SetSubtensor), bounds from sizes too, as
    # upstream's preprocessing tests fill a warp matrix; IncrSubtensor by its descriptor
    def forward(self, x):
        from megengine.core._imperative_rt.core2 import apply
        from megengine.core.ops import builtin

        n = x.shape[0]
        y = x * 1
        y[: n // 2] = 0
        m = F.broadcast_to(F.zeros((1,)), (n, 3, 3))
        m[:, 0, 0] = x[:, 0, 0]
        m[:, 1, 2] = x[:, 1, 1] * 2
        inc = builtin.IncrSubtensor([[1, True, True, False, False]])
        return y, m, apply(inc, x, x[:, :1], mge.tensor(0), mge.tensor(1))[0]


class Warp(M.Module):  # preprocessing as upstream's traced_module tests dump it: a warp
    # matrix filled by slice assignment, WarpPerspectiveV2 of an NHWC image (the CPU kernel's
    # sampling) and of an NCHW image per matrix (mat_idx; whole-pixel shifts),
    # MatrixInverse
    def forward(self, img, x, roi, idx):
        n, h, w, _ = img.shape
        scale = F.maximum((roi[:, 1, 0] - roi[:, 0, 0]) / w, (roi[:, 1, 1] - roi[:, 0, 1]) / h)
        m = F.broadcast_to(F.zeros((1,)), (n, 3, 3))
        m[:, 0, 0] = scale
        m[:, 0, 2] = roi[:, 0, 0]
        m[:, 1, 1] = scale
        m[:, 1, 2] = roi[:, 0, 1]
        m[:, 2, 2] = 1
        a = F.vision.warp_perspective(img, m, (h, w), border_mode="constant", format="NHWC")
        shift = mge.tensor([[[1, 0, 1], [0, 1, 2], [0, 0, 1]], [[1, 0, -1], [0, 1, 0], [0, 0, 1]],
                            [[1, 0, 0], [0, 1, 1], [0, 0, 1]]], dtype="float32")
        b = F.vision.warp_perspective(x, shift, (3, 4), mat_idx=idx, border_mode="reflect")
        return a, b, F.matinv(m)


class Vision(M.Module):  # WarpAffineV2 (NHWC), RemapV1, ROIAlignV1 (aligned or not, max
    # or average), ROIPooling (their argmax outputs unread)
    def forward(self, x, rois, map_xy):
        mat = mge.tensor([[[1.0, 0.1, 0.5], [0.0, 1.0, 1.0]], [[0.9, 0.0, 0.0], [0.2, 1.1, -1.0]]])
        a = F.vision.warp_affine(x.transpose(0, 2, 3, 1), mat, (6, 7), border_mode="constant",
                                 border_val=0.5)
        b = F.vision.remap(x, map_xy, border_mode="reflect")
        c = F.vision.roi_align(x, rois, (2, 3), spatial_scale=0.5, sample_points=2)
        d = F.vision.roi_align(x, rois, 2, mode="max", sample_points=(1, 2), aligned=False)
        e = F.vision.roi_pooling(x, rois, (3, 2), scale=0.5)
        return a, b, c, d, e


class Neighbours(M.Module):  # LRN, Diag, Images2Neibs (F.sliding_window), CorrelationForward
    def forward(self, x):
        return (F.nn.local_response_norm(x, 3, 1.5, 1e-3, 0.6), F.diag(x[0, 0, 0], k=1),
                F.sliding_window(x, (2, 3), padding=(1, 0), stride=(2, 1), dilation=(1, 2)),
                F.vision.correlation(x, x * 0.5, kernel_size=3, max_displacement=2, stride1=1,
                                     stride2=2, pad_size=2, is_multiply=False))


class Volume(M.Module):  # Resize3D (trilinear, align_corners or not), SVD's singular values
    def forward(self, x):
        return (F.vision.interpolate(x, size=(3, 5, 4), mode="trilinear"),
                F.vision.interpolate(x, scale_factor=1.5, mode="trilinear", align_corners=True),
                F.svd(x[:, 0, 0])[1])  # (upstream 1.13's compute_uv=False raises)


class OneHot(M.Module):  # IndexingOneHot: F.indexing_one_hot and cross_entropy's pick
    def forward(self, x):
        return (F.indexing_one_hot(x, F.argmin(x, axis=1), 1),
                F.nn.cross_entropy(x, F.argmax(x, axis=1)))


class Compare(M.Module):  # comparisons with a bool result (ElemwiseMultiType in FBS files);
    # F.arange (Linspace of a float32 count, without optimize_for_inference)
    def forward(self, x, y):
        return (x < y, x <= y, F.equal(x, y), F.not_equal(x, y), F.isnan(x), F.isinf(x),
                y[1] + F.arange(4))


class QCBR(M.Module):  # MegEngine/Models' quantized path: conv-bn-relu, pooling, linear
    def __init__(self):
        super().__init__()
        self.quant, self.dequant = M.QuantStub(), M.DequantStub()
        self.conv = M.ConvBnRelu2d(3, 8, 3, padding=1)
        self.pool = M.MaxPool2d(2)
        self.fc = M.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = self.pool(self.conv(self.quant(x)))
        return self.dequant(self.fc(F.flatten(x, 1)))


class QBlock(M.Module):  # a residual block: quantized add-relu, add, mul, concat, avg pooling
    def __init__(self):
        super().__init__()
        self.quant, self.dequant = M.QuantStub(), M.DequantStub()
        self.c1 = M.ConvBnRelu2d(4, 8, 3, padding=1)
        self.c2 = M.ConvBn2d(8, 8, 3, padding=1, groups=2)
        self.sc = M.ConvBn2d(4, 8, 1)
        self.add_relu = M.Elemwise("fuse_add_relu")
        self.c3 = M.ConvRelu2d(8, 4, 3, stride=2, padding=1)
        self.c4 = M.Conv2d(8, 4, 1, stride=2)
        self.cat, self.add, self.mul = M.Concat(), M.Elemwise("add"), M.Elemwise("mul")
        self.pool = M.AvgPool2d(2)

    def forward(self, x):
        x = self.quant(x)
        y = self.add_relu(self.c2(self.c1(x)), self.sc(x))
        a, b = self.c3(y), self.c4(y)
        return (self.dequant(self.pool(self.cat([a, b], axis=1))),
                self.dequant(self.mul(self.add(a, b), b)))


class QOut(M.Module):  # quantized outputs (integers with their scales); transposed conv,
    # quantized h_swish, add-sigmoid, sub
    def __init__(self):
        super().__init__()
        self.quant = M.QuantStub()
        self.up = M.ConvTranspose2d(2, 2, 2, stride=2, bias=False)
        self.c = M.ConvRelu2d(2, 4, 3, padding=1)
        self.fc = M.Linear(4, 3)
        self.h, self.sig = M.Elemwise("h_swish"), M.Elemwise("fuse_add_sigmoid")
        self.sub = M.Elemwise("sub")

    def forward(self, x):
        y = self.c(self.up(self.quant(x)))
        p = F.max_pool2d(y, 4)
        return self.fc(F.flatten(p, 1)), self.h(y), self.sig(y, y), self.sub(y, self.h(y)), p


class QBatchConv(M.Module):  # F.quantized.batch_conv_bias_activation: a weight per sample
    def __init__(self, w, b):
        super().__init__()
        self.w, self.b = mge.Parameter(w), mge.Parameter(b)

    def forward(self, x):
        from megengine.core.tensor import dtype

        qx = x.astype(dtype.qint8(0.05))
        qw = self.w.astype(dtype.qint8(0.04))
        qb = self.b.astype(dtype.qint32(dtype.get_scale(qx.dtype) * dtype.get_scale(qw.dtype)))
        return F.quantized.batch_conv_bias_activation(qx, qw, qb, dtype=dtype.qint8(0.1),
                                                      padding=1, nonlinear_mode="relu")


class QConv(M.Module):  # (dumped with 4-bit dtypes: refused)
    def __init__(self):
        super().__init__()
        self.quant, self.dequant = M.QuantStub(), M.DequantStub()
        self.conv = M.ConvRelu2d(2, 2, 3)

    def forward(self, x):
        return self.dequant(self.conv(self.quant(x)))


class Colors(M.Module):  # CvtColor of uint8 images (NHWC) and YUV 4:2:0 frames (N, 3H/2, W, 1)
    def forward(self, img, yuv):
        return tuple([F.vision.cvt_color(img, m) for m in (
            "RGB2GRAY", "BGR2GRAY", "RGB2YUV", "YUV2RGB", "RGB2BGR")] + [
            F.vision.cvt_color(yuv, m) for m in (
                "YUV2GRAY_NV12", "YUV2RGB_NV21", "YUV2BGR_YV12", "BT601_YUV2RGB_YU12")])


class Windows(M.Module):  # SlidingWindowTranspose (F.sliding_window_transpose)
    def forward(self, x):
        return (F.sliding_window_transpose(x, (7, 8), (2, 3), padding=(1, 2), stride=(3, 2),
                                           dilation=(2, 1)),
                F.sliding_window_transpose(x[:, :, :2, :2, :2, :2], 3, 2))


class General(M.Module):  # GeneralNorm (M.GeneralNorm: affine over two axes; not, over one)
    def __init__(self):
        super().__init__()
        self.a = M.GeneralNorm((4, 6), (1, 2))
        self.b = M.GeneralNorm((3,), (3,), eps=1e-3, affine=False)
        rng = np.random.RandomState(10)
        self.a.weight[...] = rng.randn(4, 6).astype("float32")
        self.a.bias[...] = rng.randn(4, 6).astype("float32")

    def forward(self, x):
        return self.a(x), self.b(x)


class Attention(M.Module):  # MultiHeadAttn: M.MultiHeadAttention, other key / value sizes, a
    def __init__(self):      # mask, the weights asked for
        super().__init__()
        self.a = M.MultiHeadAttention(8, 2)
        self.b = M.MultiHeadAttention(8, 4, kdim=6, vdim=4, bias=False)
        self.mask = mge.tensor(np.triu(np.ones((5, 5), bool), 1))

    def forward(self, x, k, v):
        return (self.a(x, x, x)[0], self.b(x, k, v)[0], self.a(x, x, x, attn_mask=self.mask)[0],
                self.a(x, x, x, need_weights=True)[1])


class Half(M.Module):  # a dump with enable_io16xc32: float16 values, reductions summed in float32
    def __init__(self):  # (upstream 1.13 computes NaN for CNN's softmax and pooling so)
        super().__init__()
        self.c1, self.bn = M.Conv2d(4, 8, 3, padding=1), M.BatchNorm2d(8)
        self.c2 = M.Conv2d(8, 8, 3, padding=1, groups=2)

    def forward(self, x):
        return F.relu(self.c2(F.relu(self.bn(self.c1(x))))).mean((2, 3))


class Blocked(M.Module):  # dumped with enable_nchw44 / enable_nchw88 (ARM / x86 deployment):
    # values (N, C/k, H, W, k); the first convolution's input NCHW, channel-wise and group
    # filters, a residual fused as ConvBias's bias, a transposed conv (left NCHW by upstream)
    def __init__(self):
        super().__init__()
        self.c1, self.bn = M.Conv2d(3, 8, 3, padding=1), M.BatchNorm2d(8)
        self.c0 = M.Conv2d(8, 8, 3, padding=1, bias=False)
        self.dw = M.Conv2d(8, 8, 3, padding=1, groups=8)
        self.g = M.Conv2d(8, 16, 3, stride=2, padding=1, groups=2)
        self.up = M.ConvTranspose2d(16, 8, 2, stride=2)
        self.c3 = M.Conv2d(16, 8, 1)

    def forward(self, x):
        a = F.relu(self.bn(self.c1(x)))
        a = self.dw(self.c0(a)) + a
        b = F.sigmoid(self.g(a))
        c = F.hswish(self.up(b))
        r = F.vision.interpolate(b, scale_factor=2, mode="bilinear")
        y = self.c3(F.concat([c, r[:, :8]], 1)) * 2 + 1
        return (F.adaptive_avg_pool2d(y, (2, 2)), F.max_pool2d(y, 3, 2, 1),
                F.avg_pool2d(y, 2, mode="average"))


class QBlocked(M.Module):  # quantized, dumped with enable_nchw44_dot (ARMv8.2 int8) and
    # enable_nchw4 (CUDA int8: its input's 3 channels padded to 4 by a RelayoutFormat)
    def __init__(self):
        super().__init__()
        self.quant, self.dequant = M.QuantStub(), M.DequantStub()
        self.c1 = M.ConvBnRelu2d(3, 8, 3, padding=1)
        self.c2 = M.ConvBnRelu2d(8, 8, 3, padding=1, groups=8)
        self.c3 = M.ConvBn2d(8, 16, 3, padding=1, groups=2)
        self.c4 = M.ConvRelu2d(16, 8, 1)
        self.pool = M.MaxPool2d(2)

    def forward(self, x):
        return self.dequant(self.pool(self.c4(self.c3(self.c2(self.c1(self.quant(x)))))))


class Reopt(M.Module):  # dumped, loaded and dumped again: upstream's optimizer folds the
    # batch norm and the division into constants (1, C, 1, 1) beside the batch size
    def __init__(self):
        super().__init__()
        self.c, self.bn = M.Conv2d(3, 4, 1), M.BatchNorm2d(4)

    def forward(self, x):
        h = self.c(x)
        h = h + h.shape[3] * 0.1
        a, b = F.split(h, [h.shape[2] // 2], axis=2)
        h = self.bn(F.concat([b, a], axis=2) / h.shape[0])
        a, b = F.split(h, 2, axis=1)
        n, c, hh, ww = h.shape
        h = a * b + F.full((n, c // 2, hh, ww), 0.25)
        return h, h.mean()


def quantized(net, qconfig, rng, shape, then=None):
    """``net`` with BatchNorm statistics from ``rng``, calibrated by ``qconfig`` (QAT in training
    mode on three batches of ``shape``), its qconfig reset to ``then`` if given (which keeps
    the scales: passive_qconfig), and quantized."""
    from megengine.quantization import quantize, quantize_qat, reset_qconfig

    for name, b in net.named_buffers():
        if name.endswith("running_var"):
            b.set_value(rng.uniform(0.5, 2, b.shape).astype("float32"))
        elif name.endswith("running_mean"):
            b.set_value(rng.randn(*b.shape).astype("float32") * 0.1)
    qat = quantize_qat(net, qconfig=qconfig)
    qat.train()
    for _ in range(3):
        qat(mge.tensor(rng.randn(*shape).astype("float32")))
    if then is not None:
        reset_qconfig(qat, then)
    qat.eval()
    return quantize(qat)


def make(name, net, inputs, options, batch2=None, eager=False, reoptimize=False):
    net.eval()

    @trace(symbolic=True, capture_as_const=True)
    def f(*args):
        return net(*args)

    arrays = [mge.tensor(v) for v in inputs.values()]
    outs = f(*arrays)
    outs = outs if isinstance(outs, (tuple, list)) else (outs,)
    f.dump(f"{name}.mge", arg_names=list(inputs), **options)
    if reoptimize:  # loaded and dumped again (Network.dump optimizes for inference)
        Network.load(f"{name}.mge").dump(f"{name}.mge")
    data = {}
    if eager:  # the network's own outputs (on q_z.mge, upstream's CPU kernel of the fused
        # ConvBias leaves the residual out)
        out = net(*arrays)
        data.update({f"eager_{i}": v.numpy() for i, v in
                     enumerate(out if isinstance(out, (tuple, list)) else (out,))})
    record(name, inputs, batch2, data)


def record(name, inputs, batch2=None, data=None):
    """NAME.npz for NAME.mge: its inputs, the outputs upstream's loader computes from the file,
    at ``batch2`` too if given, and upstream's reading of its metadata."""
    data = dict(data or {})
    data.update({f"in_{k}": v for k, v in inputs.items()})
    # the file is the reference: upstream's loader runs it (on "misc", upstream's trace of
    # F.clip differs from the eager call; the file's value is what a loader must give)
    got = GraphInference(f"{name}.mge").run(inp_dict=inputs)
    data.update({f"out_{i}": v for i, v in enumerate(got.values())})
    for i, v in enumerate(got.values()):  # (.npy keeps no dtype metadata: the scales)
        if v.dtype.metadata:
            data[f"dtype_{i}"] = np.array(repr(dict(v.dtype.metadata["mgb_dtype"])))
    if batch2 is not None:
        inp2 = {k: np.random.RandomState(1).randn(batch2, *v.shape[1:]).astype(v.dtype)
                for k, v in inputs.items()}
        got = GraphInference(f"{name}.mge").run(inp_dict=inp2)
        data.update({f"in2_{k}": v for k, v in inp2.items()})
        data.update({f"out2_{i}": v for i, v in enumerate(got.values())})
    meta = Network.load(f"{name}.mge").metadata  # upstream's reading of the file's metadata
    data["metadata"] = np.array(repr(meta))
    np.savez_compressed(f"{name}.npz", **data)
    print(name, os.path.getsize(f"{name}.mge"), "bytes")


def make_testcase(name="testcase", **options):
    """NAME.mge: upstream's dump(input_data=...), test cases after the model; no .npz (the
    expected outputs in the file are upstream's)."""
    net = M.Sequential(M.Linear(4, 3), M.ReLU())
    net.eval()

    @trace(symbolic=True, capture_as_const=True)
    def f(x):
        return net(x)

    f(mge.tensor(np.ones((2, 4), "float32")))
    f.dump(f"{name}.mge", arg_names=["data"], input_data=["#rand(0,1,2,4)"],
           maxerr=1e-3, silent=True, **options)
    print(name, os.path.getsize(f"{name}.mge"), "bytes")


def main(out_dir):
    os.chdir(out_dir)
    mge.random.seed(0)  # (the modules' initial weights)
    np.random.seed(0)
    rng = np.random.RandomState(0)
    img = lambda *s: rng.randn(*s).astype("float32")
    make("cnn", CNN(), {"data": img(2, 3, 12, 12)}, {})
    make("resnet", ResNet(), {"data": img(2, 3, 8, 8)}, {"keep_param_name": True,
                                                          "keep_opr_name": True}, batch2=1)
    make("mobile", MobileBlock(), {"data": img(2, 4, 6, 6)}, {"user_info": {"model": "mobile", "mean": np.array([0.5, 0.25], "float32")}},
         batch2=3)
    make("mlp", MLP(), {"x": img(4, 6)}, {"optimize_for_inference": False}, batch2=2)
    make("mlp_v1", M.Sequential(M.Linear(6, 3), M.ReLU()), {"x": img(3, 6)},
         {"model_version": 1}, batch2=2)  # (serialization version 1 operators only)
    make("transformer", Transformer(), {"x": img(2, 5, 8)}, {}, batch2=3)
    make("misc", Misc(), {"x": img(3, 4), "y": img(3, 4)}, {})
    make("ops", Ops(), {"x": img(2, 2, 3, 3)}, {"optimize_for_inference": False}, batch2=3)
    make("convbias", MobileBlock(), {"data": img(2, 4, 6, 6)},
         {"enable_fuse_conv_bias_nonlinearity": True})
    make_testcase()
    make("sizes", Sizes(), {"x": img(2, 3, 4)}, {}, batch2=3)
    make("onehot", OneHot(), {"x": img(3, 5)}, {}, batch2=2)
    # upstream's older format (MGBC: a header, the values, FlatBuffers of schema mgb1), which
    # upstream releases before 1.13 wrote by default
    make("cnn_fbs", CNN(), {"data": img(2, 3, 12, 12)}, {"dump_format": "FBS"}, batch2=3)
    make("mobile_fbs", MobileBlock(), {"data": img(2, 4, 6, 6)},
         {"dump_format": "FBS", "enable_fuse_conv_bias_nonlinearity": True,
          "user_info": {"model": "mobile"}}, batch2=3)
    make("ops_fbs", Ops(), {"x": img(2, 2, 3, 3)},
         {"dump_format": "FBS", "optimize_for_inference": False}, batch2=3)
    make_testcase("testcase_fbs", dump_format="FBS")
    x = img(2, 4)
    x[0, 0], x[1, 1] = np.nan, np.inf
    y = x.copy()
    y[0, 1:] += np.array([1, -1, 0], "float32")
    make("compare_fbs", Compare(), {"x": x, "y": y},
         {"dump_format": "FBS", "optimize_for_inference": False})
    make("windows", Windows(), {"x": np.random.RandomState(9).rand(2, 3, 3, 5, 2, 3).astype(
        "float32")}, {})
    make("general", General(), {"x": np.random.RandomState(11).randn(2, 4, 6, 3).astype(
        "float32")}, {})
    words = np.random.RandomState(12)
    make("attention", Attention(), {"x": words.randn(2, 5, 8).astype("float32"),
                                    "k": words.randn(2, 3, 6).astype("float32"),
                                    "v": words.randn(2, 3, 4).astype("float32")}, {})
    make("io16", Half(), {"x": np.random.RandomState(13).randn(2, 4, 8, 8).astype("float32")},
         {"enable_io16xc32": True})  # (float16 values, float32 sums)
    pixels = np.random.RandomState(8)
    make("colors", Colors(), {"img": pixels.randint(0, 256, (2, 4, 6, 3)).astype("uint8"),
                              "yuv": pixels.randint(0, 256, (2, 6, 6, 1)).astype("uint8")}, {})
    # quantized networks (quantize_qat, calibration, quantize), as upstream users deploy them
    from functools import partial
    from megengine.quantization import (QConfig, ema_fakequant_qconfig,
                                        ema_lowbit_fakequant_qconfig, passive_qconfig)
    from megengine.quantization.fake_quant import FakeQuantize
    from megengine.quantization.observer import ExponentialMovingAverageObserver, MinMaxObserver
    from megengine.quantization.utils import QuantMode

    asym = {"dtype": "quint8", "mode": QuantMode.ASYMMERTIC}
    quint8 = QConfig(weight_observer=partial(MinMaxObserver, **asym),
                     act_observer=partial(ExponentialMovingAverageObserver, **asym),
                     weight_fake_quant=partial(FakeQuantize, dtype="quint8"),
                     act_fake_quant=partial(FakeQuantize, dtype="quint8"))
    make("q_cbr", quantized(QCBR(), ema_fakequant_qconfig, rng, (2, 3, 8, 8)),
         {"data": img(2, 3, 8, 8)}, {}, batch2=3)
    make("q_block_fbs", quantized(QBlock(), quint8, rng, (2, 4, 8, 8)),
         {"data": img(2, 4, 8, 8)}, {"dump_format": "FBS"}, batch2=3)
    make("q_out", quantized(QOut(), ema_fakequant_qconfig, rng, (2, 2, 2, 2), passive_qconfig),
         {"data": img(2, 2, 2, 2)}, {}, batch2=1)
    make("q_z", quantized(QBlock(), ema_fakequant_qconfig, rng, (2, 4, 8, 8)),
         {"data": img(2, 4, 8, 8)}, {"enable_fuse_conv_bias_with_z": True,
                                     "enable_fuse_conv_bias_nonlinearity": True}, eager=True)
    make("q_lowbit", quantized(QConv(), ema_lowbit_fakequant_qconfig, rng, (1, 2, 4, 4)),
         {"data": img(1, 2, 4, 4)}, {})
    make("q_batchconv", QBatchConv(img(2, 3, 2, 3, 3) * 0.1, img(1, 3, 1, 1) * 0.2),
         {"data": img(2, 2, 4, 4)}, {})
    make_setsub()
    make_blocked()
    make_reoptimized()


def make_roi_index():
    """roi_index.mge: ROIAlign's argmax indices as the output (refused: not computed); no .npz."""
    from megengine.core._imperative_rt.core2 import apply
    from megengine.core.ops import builtin

    @trace(symbolic=True, capture_as_const=True)
    def f(x, rois):
        op = builtin.ROIAlign(mode="max", spatial_scale=1.0, offset=0.0, pooled_height=2,
                              pooled_width=2, sample_height=2, sample_width=2)
        return apply(op, x, rois)[1]

    f(mge.tensor(np.ones((1, 2, 4, 4), "float32")),
      mge.tensor(np.array([[0, 0, 0, 3, 3]], "float32")))
    f.dump("roi_index.mge", arg_names=["x", "rois"])
    print("roi_index", os.path.getsize("roi_index.mge"), "bytes")


def make_blocked():
    """The channel-blocked layouts of upstream's deployment options, float and int8 (run alone:
    ``make.make_blocked()``)."""
    from megengine.quantization import ema_fakequant_qconfig

    mge.random.seed(14)
    np.random.seed(14)
    rng = np.random.RandomState(14)
    fused = {"enable_fuse_conv_bias_nonlinearity": True}
    x = rng.randn(2, 3, 8, 8).astype("float32")
    make("nchw44", Blocked(), {"data": x}, {"enable_nchw44": True, **fused}, batch2=3)
    make("nchw88", Blocked(), {"data": x}, {"enable_nchw88": True}, batch2=3)
    make("q_nchw44_dot", quantized(QBlocked(), ema_fakequant_qconfig, rng, (2, 3, 8, 8)),
         {"data": x}, {"enable_nchw44_dot": True, **fused}, batch2=3)
    make("q_nchw4", quantized(QBlocked(), ema_fakequant_qconfig, rng, (2, 3, 8, 8)),
         {"data": x}, {"enable_nchw4": True, **fused}, batch2=3)  # (CUDA int8's layout)


def make_reoptimized():
    """Files of upstream's Network.load + dump (optimize_for_inference on a loaded file, as
    users edit deployed models): of upstream's own dump, and of this fork's written_batch.mge
    (upstream's optimizer fuses its shape arithmetic: FUSE_MUL_ADD3 of sizes)."""
    mge.random.seed(15)
    np.random.seed(15)
    rng = np.random.RandomState(15)
    make("reopt", Reopt(), {"x": rng.randn(2, 3, 8, 8).astype("float32")}, {}, batch2=3,
         reoptimize=True)
    Network.load("written_batch.mge").dump("reopt_batch.mge")
    ref = np.load("written_batch.npz")
    record("reopt_batch", {"x": ref["in_x"]}, batch2=3)


def make_setsub():
    """setsub, warp, vision, neighbours, volume and roi_index.mge (their own random inputs: the
    files above keep theirs)."""
    x = np.random.RandomState(5).randn(2, 3, 4).astype("float32")
    make("setsub", SetSub(), {"x": x}, {}, batch2=3)
    rng = np.random.RandomState(6)
    roi = np.array([[[1, 2], [7, 12]], [[0, 0], [4, 5]]], "float32")
    make("warp", Warp(), {"img": rng.randint(0, 256, (2, 14, 8, 3)).astype("float32"),
                          "x": rng.randn(2, 2, 5, 6).astype("float32"), "roi": roi,
                          "idx": np.array([1, 0, 1], "int32")}, {})
    rois = np.array([[0, 1.5, 1, 9, 12], [1, 0, 2.5, 7, 7], [1, 3, 3, 4, 4]], "float32")
    make("vision", Vision(), {"x": rng.rand(2, 3, 8, 8).astype("float32"), "rois": rois,
                              "map_xy": (rng.rand(2, 5, 6, 2) * 9 - 1).astype("float32")}, {})
    make("neighbours", Neighbours(), {"x": rng.rand(2, 3, 6, 7).astype("float32")}, {})
    make("volume", Volume(), {"x": rng.rand(2, 2, 4, 4, 3).astype("float32")}, {})
    make_roi_index()
    make_recurrent()


class Recurrent(M.Module):  # upstream's LSTMForward / RNNForward and cells, as its dump writes
    def __init__(self):     # them (every input batch first: the file runs at another batch)
        super().__init__()
        self.lstm = M.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True)
        self.lstm1 = M.LSTM(3, 4, bias=False)
        self.rnn = M.RNN(3, 4, nonlinearity="relu", bias=False, batch_first=True)
        self.lcell = M.LSTMCell(3, 4)
        self.rcell = M.RNNCell(3, 4)

    def forward(self, x, h):  # x: (N, T, 3), h: (N, 4, 4)
        hs = h.transpose(1, 0, 2)
        y, (hn, cn) = self.lstm(x, (hs, hs * 0.5))
        y1, (hn1, cn1) = self.lstm1(x.transpose(1, 0, 2))
        y2, hn2 = self.rnn(x)
        hc, cc = self.lcell(x[:, 0])
        return y, hn, cn, y1, hn1, cn1, y2, hn2, hc, cc, self.rcell(x[:, 1], h[:, 0])


def make_recurrent():
    """recurrent.mge (its own weights and inputs)."""
    mge.random.seed(7)
    rng = np.random.RandomState(7)
    make("recurrent", Recurrent(), {"x": rng.randn(2, 5, 3).astype("float32"),
                                    "h": rng.randn(2, 4, 4).astype("float32")}, {}, batch2=3)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__)))
