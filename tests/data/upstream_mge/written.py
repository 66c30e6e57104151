"""Files this fork writes in upstream's format (``trace.dump(dump_format="FBS_V2")``), with the
outputs a real upstream MegEngine 1.13 computes from them: tests/jit/test_upstream_mge_write.py
checks that the fork still writes these bytes and that they give upstream's outputs.

Two steps, two Pythons (upstream has no wheels for this fork's Python):

    # 1. with this fork: writes written_NAME.mge and written_NAME.npz (inputs, the fork's outputs)
    PYTHONPATH=/path/to/fork python tests/data/upstream_mge/written.py write DIR
    # 2. with upstream 1.13 (Python 3.10), from a directory where the fork is not importable:
    #    adds upstream's outputs (GraphInference of each file) to its .npz as up_<k>
    cd /tmp && python3.10 /path/to/fork/tests/data/upstream_mge/written.py run DIR

``write-big DIR`` (run from the fork's root) writes ResNet-18 and ShuffleNetV2 of
benchmarks/bench_models.py at 224x224 instead (47 and 9 MB: not kept in the repository); ``run``
then runs them too.
"""
import contextlib
import os
import sys

import numpy as np


def models():
    """{name: (build() -> (module, inputs {name: array}))}: the networks written, each built
    from fixed weights (megengine.random is seeded before each)."""
    import megengine as mge
    import megengine.functional as F
    import megengine.module as M
    from megengine import Parameter

    def seeded(net):  # fixed weights: parameter k drawn from RandomState(k), times 0.5
        for k, p in enumerate(net.parameters()):
            p.set_value(np.random.RandomState(k).randn(*p.shape).astype("float32") * 0.5)
        return net

    class CNN(M.Module):  # convolutions (groups), BN in eval, pooling of each kind, linear
        def __init__(self):
            super().__init__()
            self.c = M.Conv2d(1, 4, 3, padding=1)
            self.bn = M.BatchNorm2d(4)
            self.c2 = M.Conv2d(4, 4, 3, padding=1, groups=2)
            self.c3 = M.Conv2d(4, 2, 3, stride=2, padding=2, dilation=2, bias=False)
            self.l = M.Linear(4 * 4 * 4, 10)

        def forward(self, x):
            x = F.relu(self.bn(self.c(x)))
            x = F.max_pool2d(x, 2)
            x = F.avg_pool2d(self.c2(x), 3, stride=1, padding=1)
            side = F.adaptive_avg_pool2d(self.c3(x), (1, 1))
            return F.softmax(self.l(F.flatten(x, 1)), axis=1), side

    class MLP(M.Module):  # elementwise modes, reductions, concat, indexing, batched matmul
        def __init__(self):
            super().__init__()
            self.a = M.Linear(6, 8)
            self.b = M.Linear(8, 4)

        def forward(self, x):
            h = F.gelu(self.a(x))
            h = F.tanh(h) * F.sigmoid(h) - F.exp(-F.abs(h)) / 2.0
            h = F.concat([h, F.relu(h)], axis=1)
            s = h.sum(axis=1, keepdims=True) + h.max(axis=0, keepdims=True).mean()
            t = F.transpose(h.reshape(2, 4, 4), (0, 2, 1))
            q = F.squeeze(F.expand_dims(F.matmul(t, t).mean(axis=2), 1), 1)
            y = self.b(F.relu(h[:, :8])) + q.astype("int32").astype("float32")
            flags = (h > 0.1).astype("float32") + (h[0] <= h).astype("float32") * 2 + F.where(
                h < 0, h, h * 3)
            picked = h[:, np.array([5, -1, 0])] * 1  # (by an index array; written by one)
            picked[np.array([1])] = 0.5
            return F.softmax(y, axis=1), s, F.maximum(q, 0.5), h[1, 2:9:3], flags, picked

    class More(M.Module):  # operators written as several of upstream's, and the rest
        def __init__(self):
            super().__init__()
            self.ln = M.LayerNorm(6)
            self.c = M.Conv2d(3, 4, 3, padding=1)
            self.pr = M.PReLU(4)
            self.up = M.ConvTranspose2d(4, 2, 3, stride=2, padding=1)
            self.same = M.Identity()

        def forward(self, x, img):
            h = F.leaky_relu(self.ln(x), 0.1)  # x: (2, 5, 6)
            a, b = F.split(h, [2], axis=2)
            s = F.logsoftmax(F.stack([a.sum(axis=2), b.mean(axis=2)], axis=1), axis=2)
            c = self.pr(self.same(self.c(img)))  # img: (2, 3, 6, 6)
            big = F.nn.interpolate(c, scale_factor=2) + F.nn.interpolate(
                c, size=(12, 12), mode="nearest")
            padded = F.nn.pad(c, ((0, 0), (0, 0), (1, 2), (2, 1)), mode="reflect") + F.nn.pad(
                c, ((0, 0), (0, 0), (2, 1), (1, 2)), constant_value=0.5)
            wide = F.broadcast_to(c[:, :1], (2, 4, 6, 6)) + F.nn.pad(c, ((0, 0), (0, 0), (0, 0),
                                                                        (0, 0)), mode="edge")
            w = x * 1  # writes into a part of a value: set, a number set, and added
            w[:, 1:3] = x[:, :2] * 0.5
            w[0] = 7.0
            w[:, ::2] += 3.0
            top = F.topk(big.reshape(2, -1), 3, descending=True)
            # (singular values, and what the vectors give whatever their signs)
            u, sv, vh = F.svd(x)
            return (s, big, self.up(padded), wide, F.roll(w, (1, -2), (1, 2)) + F.roll(w, 7),
                    F.argmax(c, 1), F.argmin(s, 2, keepdims=True), top[0], top[1],
                    F.svd(x.transpose(0, 2, 1), compute_uv=False),
                    F.matmul(u * F.expand_dims(sv, 1), vh) + F.abs(vh).sum(1, keepdims=True),
                    # (float % with Python's sign rule: upstream's MOD kernel gives fmod)
                    x % 0.7 + F.mod(x, -0.3) + F.mod(x, F.flip(x, 2) + 0.1))

    class Indexing(M.Module):  # index arrays, gather/scatter, one-hot, sorting, cond_take
        def __init__(self):
            super().__init__()
            self.emb = M.Embedding(6, 3)

        def forward(self, x, idx, labels, mats):  # x (4, 5), idx (3,), labels (4,), mats
            from megengine.core._imperative_rt.core2 import apply
            from megengine.core.ops import builtin

            # several index arrays (a value of the program, constants of 1 and 2 axes), ints,
            # slices with bounds, arrays apart (their axis in front, as numpy places it)
            cube = x.reshape(4, 5, 1) * F.arange(1, 3).reshape(1, 1, 2)  # (4, 5, 2)
            picked = (x[idx, np.array([4, 0, -2])], x[np.array([[3], [0]]), 1:4],
                      cube[idx, 2:, 1], cube[np.array([1, 3]), :, np.array([0, 1])],
                      x[:, np.array([[0, 4], [2, 2]])])
            w = x * 1  # writes through index arrays: set, += (duplicates add once, as numpy)
            w[idx, np.array([1, 2, 3])] = 0.5
            w[np.array([0, 0, 2]), 1:] += x[1:, :4].sum(0) * 0.25
            incr = builtin.IndexingIncrMultiAxisVec(items=[(0, False, False, False, True)])
            w = apply(incr, w, x[:2] * 0.5, idx[:2])[0]  # (upstream's; duplicates add twice)
            perm = F.argsort(x, descending=True)  # (distinct places per row: a scatter's)
            gathered = F.gather(x, 1, perm[:, :3]) + F.indexing_one_hot(x, labels, 1, True)
            scattered = F.scatter(x, 1, perm[:, 1:4], gathered * 2)
            steps = F.floor(x * 2)  # (equal values: the stable order)
            values, order = F.sort(steps, descending=True)
            taken, where = F.cond_take(x > 0.3, x)
            masked = x * 1  # masks: of every axis, of one axis; a write through one
            masked[:, x.mean(0) > 0] = 0.25
            picked += (x[x > 0.5] * 2, x[x[:, 0] > 0], masked,
                       x[np.array([[True, False] * 2 + [True]] * 4)])
            return (*picked, w, gathered, scattered, F.one_hot(labels, 5), self.emb(labels),
                    self.emb(idx.reshape(3, 1) + labels[2:]), values, order,
                    F.argsort(steps), F.sort(steps[0])[0], F.cumsum(x, 1),
                    F.cumsum(labels, 0), F.cumsum(x > 0, 0), taken * 2, where,
                    taken.sum() + x.reshape(-1)[where].sum(), F.diag(x[0], 1),
                    F.diag(x, -1), F.matinv(mats))

    def indexing():
        net = Indexing()
        net.emb.weight.set_value(np.random.RandomState(0).randn(6, 3).astype("float32"))
        rng = np.random.RandomState(14)
        return net, {"x": rng.randn(4, 5).astype("float32"),
                     "idx": np.array([2, 0, 2], "int32"),
                     "labels": np.array([1, 4, 0, 2], "int32"),
                     "mats": (rng.randn(2, 3, 3) + 3 * np.eye(3)).astype("float32")}

    class Vision(M.Module):  # warps, remap, ROI align/pooling, nms, conv3d, sliding windows,
        # interpolation modes beyond nearest and bilinear
        def __init__(self):
            super().__init__()
            self.c3 = M.Conv3d(2, 4, (2, 3, 2), padding=(1, 0, 1), groups=2)

        def forward(self, img, mat, rois, map_xy, boxes, scores, vol):
            V = F.vision  # img: (2, 3, 6, 7), mat: (3, 3, 3)
            warped = V.warp_perspective(img, mat, (5, 8), mat_idx=np.array([1, 0, 1], "int32"),
                                        border_mode="constant", border_val=0.5)
            affine = V.warp_affine(img, mat[:2, :2] * 1, (4, 6), border_mode="reflect",
                                   format="NCHW")
            remapped = V.remap(img, map_xy, border_mode="wrap", interp_mode="nearest")
            aligned = V.roi_align(img, rois, (2, 3), spatial_scale=0.9, sample_points=(2, 1))
            pooled = V.roi_pooling(img, rois, (3, 2), mode="average", scale=0.8)
            keep = V.nms(boxes, scores, 0.3, max_output=6)
            windows = F.sliding_window(img, (2, 3), padding=(1, 0), stride=(2, 1))
            corners = F.nn.interpolate(img, size=(9, 4), align_corners=True)
            cubic = F.nn.interpolate(img, scale_factor=1.5, mode="bicubic")
            line = F.nn.interpolate(img[:, 0], size=11, mode="linear")
            tri = F.nn.interpolate(vol, size=(3, 5, 2), mode="trilinear", align_corners=True)
            return (warped, affine, remapped, aligned, pooled, keep, self.c3(vol), windows,
                    corners, cubic, line, tri)

    class Batch(M.Module):  # operators whose files follow the input's batch (run at 2 and 3)
        def __init__(self):
            super().__init__()
            self.gn, self.inorm = M.GroupNorm(2, 4), M.InstanceNorm(4)
            self.emb = M.Embedding(10, 3)
            self.stats = (F.linspace(-1, 1, 5), F.linspace(0.5, 2, 5))  # (not parameters)
            self.l3 = M.Linear(5, 3)
            self.mats = Parameter(np.zeros((2, 5, 3), "float32"))

        def forward(self, x):  # x: (N, 5)
            order = F.argsort(x, descending=True)
            top = F.argmax(x, 1)
            square = F.concat([x, x[:, :3]], 1).reshape(-1, 4, 2, 1)
            boxes = F.concat([x[:, :2], x[:, :2] + 1], 1)
            return (x.reshape(-1, 1, 5) * 2, F.gather(x, 1, order[:, :2]),
                    F.scatter(x, 1, order[:, 3:], x[:, :2] * 2), F.one_hot(top, 5),
                    self.emb(top), self.gn(square) + self.inorm(square),
                    F.nn.interpolate(x.reshape(-1, 1, 1, 5), size=(3, 7), align_corners=True),
                    F.vision.nms(boxes, x[:, 2], 0.3, max_output=4),
                    F.broadcast_to(x.sum(1, keepdims=True), (x.shape[0], 3)),
                    F.nn.interpolate(square, size=(square.shape[2] * 2, square.shape[3])),
                    # (rolls along the batch, a whole turn at batch 2, and of the flattened x)
                    F.roll(x, (2, -1), (0, 1)) + F.roll(x, -7),
                    # (topk of 3 axes and of 1: over rows, upstream's TopK takes 2-d values)
                    F.topk(x.reshape(-1, 1, 5), 2, descending=True)[0], F.topk(x[:, 0], 2)[1],
                    # (a batch norm of 2 and 3 axes: as (N, C, rest, 1), and back)
                    F.batch_norm(x, *self.stats) + F.batch_norm(
                        x.reshape(-1, 5, 1), *[v.reshape(1, 5, 1) for v in self.stats]).reshape(
                        -1, 5),
                    # (products of other than two matrices or two 3-d batches: a linear layer
                    # of a 3-d input, 4-d batches, a matrix or a vector beside a batch, batch
                    # axes broadcast)
                    self.l3(x.reshape(-1, 1, 5)),
                    F.matmul(x.reshape(-1, 1, 5, 1), x.reshape(-1, 1, 1, 5)),
                    F.matmul(self.mats[0].T, x.reshape(-1, 5, 1)),
                    F.matmul(x.reshape(-1, 1, 5), self.stats[0]),
                    F.matmul(x.reshape(-1, 1, 1, 5), self.mats),
                    # (splits along the batch: the last of sections, every part of a count)
                    F.split(x, [1], axis=0)[1] * 2, F.split(x, 2, axis=0)[0].sum(0),
                    # (writes of a number into parts of the batch's size, and through a mask)
                    _writes(x),
                    # (reshapes, fills and broadcasts of a value whose size the data decides)
                    _data_sized(F.cond_take(x > 0, x)[0]),
                    # (this fork's non_zero: coordinates of CondTake's flat places)
                    F.non_zero(x > 0.5))

    class Masked(M.Module):  # operators after a mask of channels folded back (run at 2 and 3)
        def __init__(self):
            super().__init__()
            self.conv, self.bn = M.Conv2d(4, 3, 3, padding=1), M.BatchNorm2d(4)
            self.w = Parameter(np.zeros((4, 3), "float32"))

        def forward(self, x):  # x: (N, 4, 3, 3)
            # g's axis 1 the data decides (1 channel at the written input, 2 at the other
            # batch's); h has x's shape again, so everything after it is written (an
            # element-wise op broadcasting that axis away, or a reduction over it)
            g = x[:, x.mean(axis=(0, 2, 3)) > 0]
            h = x + g.mean(1, keepdims=True)
            rows = h.mean((2, 3)) * F.sigmoid(g.sum((1, 2, 3)).reshape(-1, 1))
            return (self.conv(h), self.bn(h), F.max_pool2d(h, 2), F.adaptive_avg_pool2d(h, 2),
                    F.nn.interpolate(h, scale_factor=2), F.softmax(h, 1),
                    F.logsoftmax(rows, 1), F.topk(rows, 2, descending=True)[0],
                    F.argmax(rows, 1), F.matmul(rows, self.w), F.stack([rows, rows * 2], 1),
                    # (tiles: 7 axes in one broadcast, and an axis at a time where it would
                    # take 8)
                    F.tile(h, (1, 2, 2, 2)), F.tile(x, (2, 2, 2, 2)))

    def masked():
        return seeded(Masked()), {"x": np.random.RandomState(22).randn(2, 4, 3, 3).astype(
            "float32")}

    class Attention(M.Module):  # M.MultiHeadAttention (its biases, split from the packed
        def __init__(self):       # weights, reshaped to their own shape: no Reshape written)
            super().__init__()
            self.a, self.b = M.MultiHeadAttention(8, 2), M.MultiHeadAttention(8, 4, bias=False)
            self.mask = mge.tensor(np.triu(np.ones((5, 5), bool), 1))

        def forward(self, x):  # x: (N, 5, 8)
            return (self.a(x, x, x)[0], self.a(x, x, x, attn_mask=self.mask)[0],
                    self.a(x, x, x, need_weights=True)[1], self.b(x, x * 0.5, x)[0])

    def attention():
        return seeded(Attention()), {"x": np.random.RandomState(17).randn(2, 5, 8).astype(
            "float32")}

    def _writes(x):
        y = x * 1.0
        y[:, :2] = 0.5
        y[:, mge.tensor([4, 2], dtype="int32")] += 1.0
        y[x.shape[0] - 1] = -1.0
        y[y > 1.2] = 3.0
        y[F.abs(y) < 0.2] += 2.0
        return y

    def _data_sized(v):
        rows = v.reshape(v.shape[0], 1) * F.ones((1, 2)) + F.zeros_like(v).reshape(-1, 1)
        return rows.sum(0) + F.broadcast_to(v.reshape(-1, 1), (v.shape[0], 2)).mean(0)

    def batch():
        net = seeded(Batch())
        return net, {"x": np.random.RandomState(15).randn(2, 5).astype("float32")}

    def vision():
        net = seeded(Vision())
        rng = np.random.RandomState(14)
        mat = np.array([[[1.1, 0.1, 0.5], [0.05, 0.9, -0.3], [0.01, 0.02, 1.0]],
                        [[0.7, -0.2, 2.5], [0.3, 1.3, -1.3], [-0.02, 0.03, 1.1]],
                        [[0.9, 0.3, -1.0], [-0.1, 1.2, 0.4], [0.0, -0.01, 0.95]]], "float32")
        boxes = rng.rand(12, 4).astype("float32") * 10
        boxes[:, 2:] += boxes[:, :2] + 1
        return net, {"img": rng.randn(2, 3, 6, 7).astype("float32"), "mat": mat,
                     "rois": np.array([[0, 0.5, 0.5, 4, 3], [1, 1, 0, 5, 5.5],
                                       [1, -1, 2, 3.3, 9]], "float32"),
                     "map_xy": (rng.rand(2, 4, 5, 2) * 10 - 2).astype("float32"),
                     "boxes": boxes, "scores": rng.rand(12).astype("float32"),
                     "vol": rng.randn(1, 2, 3, 4, 5).astype("float32")}
    class Norms(M.Module):  # normalizations, norms, log-sum-exp, losses, checks, k-th values
        def __init__(self):
            super().__init__()
            self.gn = M.GroupNorm(2, 4)
            self.inorm = M.InstanceNorm(4, affine=False)
            self.w = Parameter(np.ones(5, "float32"))  # (a layer_norm's, without a bias)

        def forward(self, x, v):  # x: (2, 4, 3, 3), v: (6, 5)
            g = self.gn(x) + self.inorm(x * 2)
            ln = F.nn.layer_norm(v, (5,), True, self.w, None)
            label = F.argmax(v, axis=1)
            ce = F.loss.cross_entropy(v, label, label_smooth=0.1) + F.loss.cross_entropy(
                F.softmax(v, 1), label, with_logits=False)
            p = F.sigmoid(v * 2)
            bce = F.loss.binary_cross_entropy(v, p) + F.loss.binary_cross_entropy(
                F.sigmoid(v), p, with_logits=False, reduction="sum")
            pair = (F.loss.l1_loss(v, ln) + F.loss.square_loss(v, ln)
                    + F.loss.smooth_l1_loss(v, ln, reduction="none"))
            norms = F.norm(x, axis=(2, 3)) + F.logsumexp(x, (2, 3))
            scaled = F.norm(x, 3, axis=1, keepdims=True) * x + F.logsumexp(x, 3, keepdims=True)
            unit = F.normalize(v, axis=1) + F.clip(v, lower=0.1) + F.atan(v) + F.trunc(v * 3)
            checks = F.isinf(F.log(F.relu(v))).astype("int32") + F.isnan(
                F.sqrt(v)).astype("int32") * 2
            kth = F.topk(v, 2, descending=True, kth_only=True)
            # (of more axes: written over its rows and reshaped back, each size taken where
            # the file runs: the other batch runs it with x's)
            kth3 = F.topk(x, 2, kth_only=True)
            return (g, ln, ce, bce, pair, norms, scaled, unit, checks, kth[0], kth[1],
                    F.argmax(x), F.argmin(v), kth3[0], kth3[1])

    class Layers(M.Module):  # convolutions of every rank (deformable, local), batch norms, windows
                             # summed back
        def __init__(self):
            super().__init__()
            self.c1 = M.Conv1d(4, 6, 3, padding=2, dilation=2, groups=2)
            self.t3 = M.ConvTranspose3d(2, 3, 2, stride=2, padding=1, output_padding=1)
            self.bn1 = M.BatchNorm1d(6)
            self.local = M.LocalConv2d(2, 3, 4, 4, 3, padding=1)
            self.w1 = Parameter(np.zeros((3, 4, 3), "float32"))
            self.wd = Parameter(np.zeros((4, 2, 3, 3), "float32"))
            self.wt = Parameter(np.zeros((2, 3, 2, 2, 2), "float32"))
            self.stats = Parameter(np.zeros((2, 1, 2, 1, 1), "float32"))
            self.off = Parameter(np.zeros((1, 18, 1, 1), "float32"))
            # grouped ones of this fork's weight layout (O, I/G, k...), which the file
            # reshapes to upstream's (G, O/G, I/G, k...)
            self.w3g = Parameter(np.zeros((4, 1, 2, 2, 2), "float32"))
            self.wdg = Parameter(np.zeros((4, 1, 3, 3), "float32"))

        def forward(self, s, v, img):  # s (2, 4, 8), v (1, 2, 3, 4, 4), img (1, 2, 4, 4)
            a = self.bn1(self.c1(s))
            b = F.conv1d(s, self.w1, stride=2, padding=1)
            c = self.t3(v) + F.conv_transpose3d(v, self.wt)[:, :, :1, :1, :1]
            mean, var = self.stats[0], F.abs(self.stats[1]) + 0.5
            plain = F.nn.batch_norm(img, mean, var, training=False)
            scaled = F.nn.batch_norm(img, mean, var, weight=var, training=False)
            shifted = F.nn.batch_norm(img, mean, var, bias=mean, training=False)
            flat = F.nn.batch_norm(F.flatten(img, 2), mean.reshape(1, 2, 1),
                                   var.reshape(1, 2, 1), training=False)
            offset = F.tanh(img.sum(axis=1, keepdims=True) * self.off)  # (1, 18, 4, 4)
            mask = F.sigmoid(img.mean(axis=1, keepdims=True) + self.off[:, :9])
            d = F.deformable_conv2d(img, self.wd, offset, mask, padding=1)
            dg = F.deformable_conv2d(img, self.wdg, offset, mask, padding=1, groups=2)
            # (windows summed back: SlidingWindowTranspose)
            back = F.sliding_window_transpose(F.sliding_window(img, 2, padding=1) * 0.5, (4, 4),
                                              2, padding=1)
            return (a, b, c, plain, scaled, shifted, flat, d, self.local(img),
                    F.conv3d(v, self.w3g, padding=(0, 1, 0), groups=2), dg, back)

    class Recurrent(M.Module):  # M.LSTM / M.RNN of every kind, the cells (inference)
        def __init__(self):
            super().__init__()
            self.lstm = M.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True)
            self.lstm1 = M.LSTM(3, 4, bias=False)
            self.rnn = M.RNN(3, 4, num_layers=2, nonlinearity="relu", batch_first=True)
            self.rnn1 = M.RNN(3, 4, bidirectional=True, bias=False)
            self.lcell = M.LSTMCell(3, 4)
            self.rcell = M.RNNCell(3, 4, nonlinearity="relu", bias=False)
            self.tcell = M.RNNCell(3, 4)

        def forward(self, x, h):  # x: (N, T, 3), h: (N, 2, 4) (every input batch first)
            seq, hs = x.transpose(1, 0, 2), h.transpose(1, 0, 2)
            y, (hn, cn) = self.lstm(x)  # (zero states)
            y1, (hn1, cn1) = self.lstm1(seq, (hs[:1], hs[1:]))
            y2, hn2 = self.rnn(x, hs)
            y3, hn3 = self.rnn1(seq)
            hc, cc = self.lcell(x[:, 0], (h[:, 0], h[:, 1]))
            return (y, hn, cn, y1, hn1, cn1, y2, hn2, y3, hn3, hc, cc,
                    self.rcell(x[:, 1], h[:, 0]), self.tcell(x[:, 2]))

    def recurrent():
        net = seeded(Recurrent())
        rng = np.random.RandomState(16)
        return net, {"x": rng.randn(2, 5, 3).astype("float32"),
                     "h": rng.randn(2, 2, 4).astype("float32")}

    def layers():
        net = seeded(Layers())
        rng = np.random.RandomState(15)
        net.bn1.running_mean.set_value(rng.randn(1, 6, 1, 1).astype("float32"))
        net.bn1.running_var.set_value(rng.rand(1, 6, 1, 1).astype("float32") + 0.5)
        return net, {"s": rng.randn(2, 4, 8).astype("float32"),
                     "v": rng.randn(1, 2, 3, 4, 4).astype("float32"),
                     "img": rng.randn(1, 2, 4, 4).astype("float32")}

    def norms():
        net = seeded(Norms())
        rng = np.random.RandomState(14)
        return net, {"x": rng.randn(2, 4, 3, 3).astype("float32"),
                     "v": rng.randn(6, 5).astype("float32")}

    def more():
        net = seeded(More())
        rng = np.random.RandomState(12)
        return net, {"x": rng.randn(2, 5, 6).astype("float32"),
                     "img": rng.randn(2, 3, 6, 6).astype("float32")}

    def cnn():
        net = seeded(CNN())
        rng = np.random.RandomState(10)
        net.bn.running_mean.set_value(rng.randn(1, 4, 1, 1).astype("float32"))
        net.bn.running_var.set_value(rng.rand(1, 4, 1, 1).astype("float32") + 0.5)
        return net, {"x": rng.rand(2, 1, 8, 8).astype("float32")}

    def mlp():
        net = seeded(MLP())
        return net, {"x": np.random.RandomState(11).randn(2, 6).astype("float32")}

    def quantized(qconfig):
        """tests/data/upstream_mge/make.py's quantized conv-bn-relu network, residual block and
        network of quantized outputs (quantize_qat, calibration, quantize), as upstream users
        deploy them; one input."""
        def build():
            import importlib.util

            spec = importlib.util.spec_from_file_location("make", os.path.join(
                os.path.dirname(os.path.abspath(__file__)), "make.py"))
            make = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(make)

            from megengine.quantization import passive_qconfig

            class Both(M.Module):
                def __init__(self, rng):
                    super().__init__()
                    self.cbr = make.quantized(make.QCBR(), qconfig(), rng, (2, 3, 8, 8))
                    self.block = make.quantized(make.QBlock(), qconfig(), rng, (2, 4, 8, 8))
                    # (quantized outputs, a transposed convolution, h_swish, add-sigmoid, sub;
                    # make.py's qint8 scales kept by passive_qconfig: qint8 only)
                    self.out = make.quantized(make.QOut(), qconfig(), rng, (2, 2, 2, 2),
                                              passive_qconfig) if qconfig is qint8 else None

                def forward(self, x):
                    outs = (self.cbr(x[:, :3]), *self.block(x))
                    return outs if self.out is None else outs + self.out(x[:, :2, :2, :2])

            import megengine as mge

            mge.random.seed(13)  # (the layers' initial weights)
            rng = np.random.RandomState(13)
            return Both(rng), {"x": rng.randn(2, 4, 8, 8).astype("float32")}
        return build

    def qint8():
        from megengine.quantization import ema_fakequant_qconfig

        return ema_fakequant_qconfig

    def quint8():  # (asymmetric: a zero point in the dtype)
        from functools import partial

        from megengine.quantization import QConfig
        from megengine.quantization.fake_quant import FakeQuantize
        from megengine.quantization.observer import (ExponentialMovingAverageObserver,
                                                     MinMaxObserver)
        from megengine.quantization.utils import QuantMode

        asym = {"dtype": "quint8", "mode": QuantMode.ASYMMERTIC}
        return QConfig(weight_observer=partial(MinMaxObserver, **asym),
                       act_observer=partial(ExponentialMovingAverageObserver, **asym),
                       weight_fake_quant=partial(FakeQuantize, dtype="quint8"),
                       act_fake_quant=partial(FakeQuantize, dtype="quint8"))

    def qtranspose():
        """Quantized transposed convolutions with a bias (upstream 1.13's quantized
        conv_transpose2d refuses one) and output padding; qint8, calibrated as `quantized`."""
        import megengine as mge
        from megengine.quantization import ema_fakequant_qconfig, quantize, quantize_qat

        class QTranspose(M.Module):
            def __init__(self):
                super().__init__()
                self.quant = M.QuantStub()
                self.a = M.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1)
                self.b = M.ConvTranspose2d(3, 2, 2, stride=1, groups=1)
                self.dequant = M.DequantStub()

            def forward(self, x):
                a = self.a(self.quant(x))
                return self.dequant(self.b(a)), a

        mge.random.seed(17)
        rng = np.random.RandomState(17)
        net = seeded(QTranspose())
        qat = quantize_qat(net, qconfig=ema_fakequant_qconfig)
        qat.train()
        for _ in range(3):
            qat(mge.tensor(rng.randn(2, 2, 4, 4).astype("float32")))
        qat.eval()
        return quantize(qat), {"x": rng.randn(2, 2, 4, 4).astype("float32") * 2}

    return {"cnn": cnn, "mlp": mlp, "qtranspose": qtranspose, "more": more, "norms": norms, "qint8": quantized(qint8),
            "quint8": quantized(quint8), "vision": vision, "indexing": indexing, "batch": batch, "masked": masked, "attention": attention,
            "layers": layers, "recurrent": recurrent}


QUANTIZED = {"qint8", "quint8", "qtranspose"}  # (built and traced on cpu0)

# the files whose shapes follow the input's batch (a flatten traced with symbolic shapes: its
# target shape is computed from the input's), run at this batch too (in2_*, fork2_*, up2_*)
OTHER_BATCH = {"cnn": 3, "norms": 3, "batch": 3, "recurrent": 3, "qtranspose": 3, "layers": 3,
               "qint8": 3, "quint8": 3, "masked": 3, "attention": 3}


def other_batch(name, build):
    """(inputs at the other batch, the module's eager outputs for them), or None."""
    import megengine as mge

    if name not in OTHER_BATCH:
        return None
    with _building(name):
        net, inputs = build()
        net.eval()
        rng = np.random.RandomState(20)
        inputs = {k: rng.randn(OTHER_BATCH[name], *v.shape[1:]).astype(v.dtype)
                  for k, v in inputs.items()}
        out = net(*(mge.tensor(v) for v in inputs.values()))
        return inputs, [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


@contextlib.contextmanager
def _building(name):
    """Model ``name``'s device and thread count while it is built and run: the device name the
    files record, whatever the machine's default (MGE_DEFAULT_DEVICE=cpu0 would record cpu0);
    quantized networks run on the CPU (their dtypes live in numpy's metadata); one torch
    thread, as the tests run: a calibration's sums on torch's pool round by the thread count,
    and the scales with them."""
    import megengine as mge

    import torch

    before, threads = mge.get_default_device(), torch.get_num_threads()
    mge.set_default_device("cpu0" if name in QUANTIZED else "xpux")
    torch.set_num_threads(1)
    try:
        yield
    finally:
        mge.set_default_device(before)
        torch.set_num_threads(threads)


def write(name, build, file=None):
    """Trace model ``name`` and dump it in upstream's format to ``file`` (None: only return
    the bytes); returns (bytes, inputs, the traced outputs)."""
    import io

    import megengine as mge
    from megengine.jit import trace

    with _building(name):
        net, inputs = build()
        net.eval()
        names = list(inputs)

        @trace(symbolic=True, capture_as_const=True)
        def f(*xs):
            out = net(*xs)
            return out if isinstance(out, tuple) else (out,)

        outs = [o.numpy() for o in f(*(mge.tensor(inputs[n]) for n in names))]
        buf = io.BytesIO()
        f.dump(buf, arg_names=names, dump_format="FBS_V2")
        data = buf.getvalue()
    if file is not None:
        with open(file, "wb") as fh:
            fh.write(data)
    return data, inputs, outs


def big_models():
    """ResNet-18 and ShuffleNetV2 (benchmarks/bench_models.py), eval mode, at 224x224."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..",
                                    "benchmarks"))
    import bench_models

    def build(cls):
        return lambda: (cls(), {"x": np.random.RandomState(0).rand(2, 3, 224, 224).astype(
            "float32")})

    return {"resnet18": build(bench_models.MgeResNet18),
            "shufflenet": build(bench_models.MgeShuffleNetV2)}


def main(step, out_dir):
    if step == "run":  # (every file written to out_dir)
        names = sorted(f[8:-4] for f in os.listdir(out_dir)
                       if f.startswith("written_") and f.endswith(".npz"))
        todo = {name: None for name in names}
    else:
        todo = big_models() if step == "write-big" else models()
        step = "write"
    for name, build in todo.items():
        path = os.path.join(out_dir, f"written_{name}.mge")
        if step == "write":
            _, inputs, outs = write(name, build, path)
            arrays = {**{f"in_{k}": v for k, v in inputs.items()},
                      **{f"fork_{k}": v for k, v in enumerate(outs)}}
            second = other_batch(name, build)
            if second is not None:
                arrays.update({f"in2_{k}": v for k, v in second[0].items()})
                arrays.update({f"fork2_{k}": v for k, v in enumerate(second[1])})
            np.savez(path[:-4] + ".npz", **arrays)
            continue
        from megengine.utils.comp_graph_tools import GraphInference

        ref = dict(np.load(path[:-4] + ".npz"))
        for tag in ("", "2"):
            feeds = {k[len(tag) + 3:]: v for k, v in ref.items() if k.startswith(f"in{tag}_")}
            if feeds:
                got = GraphInference(path).run(inp_dict=feeds)
                ref.update({f"up{tag}_{k}": np.asarray(v) for k, v in enumerate(got.values())})
        np.savez(path[:-4] + ".npz", **ref)
        print(name, "upstream / fork max difference:",
              [float(np.abs(ref[k] - ref["fork" + k[2:]]).max()) for k in sorted(ref)
               if k.startswith("up")])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else os.path.dirname(
        os.path.abspath(__file__)))
