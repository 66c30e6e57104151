"""Region pooling (F.vision.roi_align, roi_pooling, deformable_psroi_pooling) and its gradients.

Split out of vision.py, which re-exports them, as upstream spells them F.vision.<name>.
"""
import numpy as np

from ..core import _config
from ..core.dispatch import Op, apply
from ..core.ops import ArgumentError, LinearMap, ShapeError, masked_gradient, xp_of
from . import _aten
from ._args import _astype_real, _int, _int_pair, _real, _tensor

__all__ = ["deformable_psroi_pooling", "roi_align", "roi_pooling"]

# ----- region pooling: roi_align, roi_pooling -----
# ``rois`` is (K, 5): (batch index, x1, y1, x2, y2) in input pixels before ``scale``.

def _check_rois(what, inp, rois):
    """Checked ``rois``: integer ones in float32 (a quantized tensor's values). Wrong shapes raise
    ShapeError, both ValueError and upstream's RuntimeError (megdnn's shape assertion)."""
    if inp.ndim != 4:
        raise ShapeError(f"{what}: inp must be (N, C, H, W), got shape {inp.shape}")
    if rois.ndim != 2 or rois.shape[1] != 5:
        raise ShapeError(f"{what}: rois must be (K, 5) rows of (batch, x1, y1, x2, y2), got "
                         f"shape {rois.shape}")
    if rois.dtype.kind != "f":
        rois = _astype_real(rois, np.float32, what)
    batch = rois._peek()[:, 0].astype(np.int64)  # a check only: unseen by jit.trace
    # (the size on the left: jit.trace's comparison of a size, not a numpy value of one,
    # which trace.dump(dump_format="FBS_V2") would warn of)
    if batch.size and (batch.min() < 0 or inp.shape[0] <= batch.max()):
        raise ValueError(f"{what}: roi batch indices must be in [0, {inp.shape[0]}), got "
                         f"{sorted(set(batch.tolist()))}")
    return rois


class _RegionPooling(Op):
    """roi_align and roi_pooling: linear in the image once forward has fixed where each bin
    reads (``resample(img)`` applies that map, ``image_grad(g)`` its transpose), with no
    gradient for the rois; the gradient's own graph is the `LinearMap` of the two."""

    def grad_graph(self, inputs, outputs, grads):
        return (apply(LinearMap(self.image_grad, self.resample), grads[0]), None)

    def backward(self, g):
        return self.image_grad(g), None


class _ROIAlign(_RegionPooling):
    """Bilinear samples on a (sample_h, sample_w) grid in each of (ph, pw) bins of every roi,
    averaged or maxed per bin.

    The samples come from ATen's ``grid_sampler_2d`` (bilinear, zero padding), which reads a
    neighbour outside the image as 0 exactly as megdnn's roi_align does; its backward scatters
    each sample's gradient into its four neighbours. The rois of one image are one grid of
    (K_b * ph * sh, pw * sw) points. (The separable products this replaced copied the whole
    feature map once per roi: Faster R-CNN spent two thirds of its step there.)
    """

    def __init__(self, mode, scale, offset, pooled, samples):
        self.mode, self.scale, self.offset = mode, scale, offset
        self.pooled, self.samples = pooled, samples

    def forward(self, img, rois):
        xp = xp_of(img)
        n, c, h, w = self.img_shape = img.shape
        (ph, pw), (sh, sw) = self.pooled, self.samples
        k = self.k = rois.shape[0]
        r = rois.astype(np.float64)
        batch = r[:, 0].astype(np.int64)
        start = r[:, 1:3] * self.scale - self.offset  # (x, y)
        size = xp.maximum(r[:, 3:5] * self.scale - self.offset - start, 0)

        def normalized(k_start, k_size, bins, per_bin, length):
            # sample positions in pixel-index coordinates, then grid_sample's normalised ones
            # (align_corners=False: index i is (2i + 1) / length - 1)
            steps = (xp.arange(bins)[:, None] + (xp.arange(per_bin) + 0.5) / per_bin).ravel()
            pos = k_start[:, None] + (k_size / bins)[:, None] * steps  # (K, bins * per_bin)
            return ((2 * pos + 1) / length - 1).astype(img.dtype)

        gy = normalized(start[:, 1], size[:, 1], ph, sh, h)  # (K, ph*sh)
        gx = normalized(start[:, 0], size[:, 0], pw, sw, w)  # (K, pw*sw)
        # grid_sampler's output (1, C, K_b*ph*sh, pw*sw) tiles each bin's samples as an
        # (sh, sw) window, so ATen's pooling with kernel = stride = (sh, sw) reduces the bins
        # (max pooling keeps the first maximum in row-major sample order, as megdnn's)
        self.groups = []  # (image, its rois' indices, their grid, samples' shape, argmax)
        out = xp.empty((k, c, ph, pw), img.dtype)
        host_batch = batch.get() if hasattr(batch, "get") else batch
        aten = _aten.aten()
        window = [sh, sw]
        for b in np.unique(host_batch):
            idx = xp.asarray(np.flatnonzero(host_batch == b))
            kb = int(idx.shape[0])
            grid = xp.empty((kb, ph * sh, pw * sw, 2), img.dtype)
            grid[..., 0] = gx[idx][:, None, :]
            grid[..., 1] = gy[idx][:, :, None]
            grid = grid.reshape(1, kb * ph * sh, pw * sw, 2)
            image = img[int(b):int(b) + 1]
            samples = aten.grid_sampler_2d(_aten.view(image), _aten.view(grid), 0, 0, False)
            arg = None  # bilinear (0), zeros padding (0), align_corners=False
            if self.mode == "average":
                pooled = aten.avg_pool2d(samples, window, window, [0, 0], False, True, None)
            else:
                pooled, arg = aten.max_pool2d_with_indices(samples, window, window, [0, 0],
                                                           [1, 1], False)
            out[idx] = _aten.array(pooled).reshape(c, kb, ph, pw).transpose(1, 0, 2, 3)
            self.groups.append((int(b), idx, image, grid, tuple(samples.shape), arg))
        return out

    def resample(self, img):
        """The forward's map applied to ``img``, linear for fixed rois: the same samples,
        averaged, or taken where the forward found each bin's maximum (the adjoint of
        `image_grad`)."""
        xp = xp_of(img)
        c = img.shape[1]
        (ph, pw), window = self.pooled, list(self.samples)
        out = xp.empty((self.k, c, ph, pw), img.dtype)
        aten = _aten.aten()
        for b, idx, _, grid, _, arg in self.groups:
            samples = aten.grid_sampler_2d(_aten.view(img[b:b + 1]), _aten.view(grid), 0, 0,
                                           False)
            if arg is None:
                pooled = aten.avg_pool2d(samples, window, window, [0, 0], False, True, None)
            else:
                pooled = samples.flatten(2).gather(2, arg.flatten(2)).view(arg.shape)
            kb = int(idx.shape[0])
            out[idx] = _aten.array(pooled).reshape(c, kb, ph, pw).transpose(1, 0, 2, 3)
        return out

    def image_grad(self, g):
        xp = xp_of(g)
        c = g.shape[1]
        (ph, pw), (sh, sw) = self.pooled, self.samples
        gimg = xp.zeros(self.img_shape, g.dtype)
        aten, torch = _aten.aten(), _aten.torch_module()
        window = [sh, sw]
        for b, idx, image, grid, shape, arg in self.groups:
            kb = int(idx.shape[0])
            gb = xp.ascontiguousarray(g[idx].transpose(1, 0, 2, 3)).reshape(1, c, kb * ph, pw)
            tg = _aten.view(gb)
            like = torch.empty(shape, dtype=tg.dtype, device=tg.device)  # pooling reads its shape
            if self.mode == "average":
                gs = aten.avg_pool2d_backward(tg, like, window, window, [0, 0], False, True, None)
            else:
                gs = aten.max_pool2d_with_indices_backward(tg, like, window, window, [0, 0],
                                                           [1, 1], False, arg)
            gin, _ = aten.grid_sampler_2d_backward(gs, _aten.view(image), _aten.view(grid), 0,
                                                   0, False, [True, False])
            gimg[b] += _aten.array(gin)[0]
        return gimg


def _positive_pair(value, name, what):
    pair = _int_pair(value, name, what)
    if min(pair) < 1:
        raise ArgumentError(f"{what}: {name} must be positive, got {value!r}")
    return pair


def roi_align(inp, rois, output_shape, mode="average", spatial_scale=1.0, sample_points=2,
              aligned=True):
    """RoIAlign: (K, C, ph, pw) features of the ``rois`` (K, 5) = (batch, x1, y1, x2, y2).

    Each of the ph x pw bins of a roi (scaled by ``spatial_scale``; shifted by -0.5 when
    ``aligned``) averages (``mode="average"``) or maxes (``"max"``) ``sample_points`` (an int
    or (h, w)) bilinear samples on a regular grid; samples outside the image read zeros.
    Differentiable in ``inp``.
    """
    _config._effective_conv_format("NCHW", "roi_align", supported=("NCHW",))  # as upstream
    inp, rois = _tensor(inp), _tensor(rois)
    rois = _check_rois("roi_align", inp, rois)
    mode = str(mode).lower()
    if mode not in ("average", "max"):
        raise ArgumentError(f"roi_align: mode must be 'average' or 'max', got {mode!r}")
    pooled = _positive_pair(output_shape, "output_shape", "roi_align")
    samples = _positive_pair(sample_points, "sample_points", "roi_align")
    # float64 computes in float64; float16 gives float16 as upstream's kernel does, sampled and
    # pooled in float32 and rounded once (upstream's adds its samples in float16); other dtypes
    # compute in float32
    dtype = inp.dtype if inp.dtype in (np.float16, np.float64) else np.dtype(np.float32)
    work = inp if inp.dtype == np.float64 else _astype_real(inp, np.float32, "roi_align")
    op = _ROIAlign(mode, _real(spatial_scale, "spatial_scale", "roi_align"),
                   0.5 if aligned else 0.0, pooled, samples)
    out = apply(op, work, rois)
    return out if out.dtype == dtype else out.astype(dtype)


def _round_half_away(xp, x):
    return xp.sign(x) * xp.floor(xp.abs(x) + 0.5)


class _ROIPooling(_RegionPooling):
    """Caffe/megdnn RoI pooling: integer roi corners, bins from floor/ceil of the bin size,
    max or average over each bin's pixels (an empty bin gives 0)."""

    def __init__(self, mode, scale, pooled):
        self.mode, self.scale, self.pooled = mode, scale, pooled

    def _bins(self, xp, lo, hi, bins, n):
        """Start and end (K, bins) of each bin along one axis, clipped to [0, n)."""
        size = xp.maximum(hi - lo + 1, 1).astype(np.float32)
        bin_size = (size / np.float32(bins))[:, None]
        idx = xp.arange(bins, dtype=np.float32)
        start = xp.floor(idx * bin_size).astype(np.int64) + lo[:, None]
        end = xp.ceil((idx + 1) * bin_size).astype(np.int64) + lo[:, None]
        return xp.clip(start, 0, n), xp.clip(end, 0, n)

    def forward(self, img, rois):
        xp = xp_of(img)
        n, c, h, w = self.img_shape = img.shape
        ph, pw = self.pooled
        r = rois.astype(np.float32)
        batch = r[:, 0].astype(np.int64)
        corner = _round_half_away(xp, r[:, 1:5] * np.float32(self.scale)).astype(np.int64)
        hs, he = self._bins(xp, corner[:, 1], corner[:, 3], ph, h)
        ws, we = self._bins(xp, corner[:, 0], corner[:, 2], pw, w)
        # every bin gathered as a (bh, bw) window padded to the largest bin; pad slots masked
        bh, bw = max(int((he - hs).max()), 1), max(int((we - ws).max()), 1)
        yy = hs[:, :, None] + xp.arange(bh)  # (K, ph, bh)
        xx = ws[:, :, None] + xp.arange(bw)  # (K, pw, bw)
        vy, vx = yy < he[:, :, None], xx < we[:, :, None]
        yy, xx = xp.minimum(yy, h - 1), xp.minimum(xx, w - 1)
        k = rois.shape[0]
        ysel = yy.reshape(k, ph, 1, bh, 1)
        xsel = xx.reshape(k, 1, pw, 1, bw)
        vals = img[batch.reshape(k, 1, 1, 1, 1), :, ysel, xsel]  # (K, ph, pw, bh, bw, C)
        valid = (vy.reshape(k, ph, 1, bh, 1) & vx.reshape(k, 1, pw, 1, bw))[..., None]
        vals = vals.reshape(k, ph, pw, bh * bw, c)
        valid = valid.reshape(k, ph, pw, bh * bw, 1)
        count = valid.sum(axis=3)  # (K, ph, pw, 1)
        if self.mode == "average":
            self.index = (batch, ysel, xsel, valid, count)
            out = xp.where(valid, vals, 0).sum(axis=3) / xp.maximum(count, 1)
        else:
            masked = xp.where(valid, vals, -xp.inf)
            arg = masked.argmax(axis=3)  # first maximum in row-major window order, as megdnn
            out = xp.take_along_axis(vals, arg[:, :, :, None], 3)[:, :, :, 0]
            out = xp.where(count > 0, out, 0)
            # the source pixel of each output: (K, ph, pw, C) rows and columns
            src_y = xp.take_along_axis(xp.broadcast_to(yy[:, :, None], (k, ph, pw, bh)),
                                       arg // bw, 3)
            src_x = xp.take_along_axis(xp.broadcast_to(xx[:, None], (k, ph, pw, bw)), arg % bw, 3)
            self.index = (batch, src_y, src_x, count > 0)
        return xp.ascontiguousarray(out.transpose(0, 3, 1, 2)).astype(img.dtype)

    def resample(self, img):
        """The forward's map applied to ``img``, linear for fixed rois: each bin's mean, or its
        value at the forward's maximum (the adjoint of `image_grad`)."""
        xp = xp_of(img)
        c = img.shape[1]
        if self.mode == "average":
            batch, ysel, xsel, valid, count = self.index
            k, ph, pw = count.shape[:3]
            vals = img[batch.reshape(k, 1, 1, 1, 1), :, ysel, xsel].reshape(k, ph, pw, -1, c)
            out = xp.where(valid, vals, 0).sum(axis=3) / xp.maximum(count, 1)
        else:
            batch, ys, xs, has = self.index
            out = img[batch.reshape(-1, 1, 1, 1), xp.arange(c), ys, xs] * has
        return xp.ascontiguousarray(out.transpose(0, 3, 1, 2)).astype(img.dtype)

    def image_grad(self, g):
        xp = xp_of(g)
        n, c, h, w = self.img_shape
        k, _, ph, pw = g.shape
        gl = g.transpose(0, 2, 3, 1)  # (K, ph, pw, C)
        cidx = xp.arange(c)
        if self.mode == "average":
            batch, ysel, xsel, valid, count = self.index
            bh, bw = ysel.shape[3], xsel.shape[4]
            # (K, ph, pw, bh * bw, C); selected, so that a NaN or inf gradient reaches no pad
            # slot (`masked_gradient`)
            share = masked_gradient((gl / xp.maximum(count, 1))[:, :, :, None, :], valid)
            share = share.reshape(k, ph, pw, bh, bw, c)
            ys = xp.broadcast_to(ysel[..., None], (k, ph, pw, bh, bw, 1))
            xs = xp.broadcast_to(xsel[..., None], (k, ph, pw, bh, bw, 1))
            bs = batch.reshape(k, 1, 1, 1, 1, 1)
        else:
            batch, ys, xs, has = self.index
            share = masked_gradient(gl, has)  # ys, xs: (K, ph, pw, C), each output's source
            bs = batch.reshape(k, 1, 1, 1)
        flat = ((bs * c + cidx) * h + ys) * w + xs
        flat = xp.broadcast_to(flat, share.shape)
        gimg = xp.bincount(flat.ravel(), weights=share.ravel(), minlength=n * c * h * w)
        return gimg.astype(g.dtype).reshape(self.img_shape)


def roi_pooling(inp, rois, output_shape, mode="max", scale=1.0):
    """RoI pooling: (K, C, ph, pw) features of the ``rois`` (K, 5) = (batch, x1, y1, x2, y2).

    Roi corners are scaled by ``scale`` and rounded; each of the ph x pw bins takes the max
    (``mode="max"``) or mean (``"average"``) of its pixels, 0 for an empty bin.
    Differentiable in ``inp``.
    """
    inp, rois = _tensor(inp), _tensor(rois)
    rois = _check_rois("roi_pooling", inp, rois)
    mode = str(mode).lower()
    if mode not in ("max", "average"):
        raise ArgumentError(f"roi_pooling: mode must be 'max' or 'average', got {mode!r}")
    pooled = _positive_pair(output_shape, "output_shape", "roi_pooling")
    inp = inp if inp.dtype.kind == "f" else _astype_real(inp, np.float32, "roi_pooling")
    return apply(_ROIPooling(mode, _real(scale, "scale", "roi_pooling"), pooled), inp, rois)


# ----- deformable position-sensitive roi pooling (R-FCN / Deformable ConvNets) -----

class _DeformablePSROIPooling(Op):
    """megdnn's DeformablePSROIPooling: each (pooled_h, pooled_w) bin of a roi averages a
    sample_per_part**2 grid of bilinear samples of its own channel, the bin shifted by
    ``trans * trans_std * roi size`` (one (dx, dy) per part cell and channel class).

    Roi corners are rounded and the roi spans [round(x1) * scale - 0.5, (round(x2) + 1) *
    scale - 0.5] (at least 0.1 wide); samples start at the bin's corner, step bin / samples,
    and are skipped outside [-0.5, size - 0.5], the rest clamped to the image; a bin with no
    sample gives 0. The gradient reaches ``inp`` and ``trans`` (not ``rois``).
    """

    def __init__(self, no_trans, part, pooled, samples, scale, trans_std):
        self.no_trans, self.part, self.pooled = no_trans, part, pooled
        self.samples, self.scale, self.trans_std = samples, scale, trans_std

    def _geometry(self, xp, rois, trans, h, w, dtype):
        """The samples' positions, in upstream's float32 arithmetic and order (``dtype``): a
        sample on the edge of the image, -0.5, is inside there and outside in float64 (roi
        rows [-1, 0] in 3 bins of 2 samples: -1 + 1/3 + 1/6 is -0.49999994 in float32,
        -0.5000000000000001 in float64; upstream 1.13 measured)."""
        (ph, pw), s, part = self.pooled, self.samples, self.part
        r = _round_half_away(xp, rois[:, 1:5].astype(dtype))
        scale = dtype.type(self.scale)
        left, top = r[:, 0] * scale - 0.5, r[:, 1] * scale - 0.5
        rw = xp.maximum((r[:, 2] + 1) * scale - 0.5 - left, dtype.type(0.1))  # (K,)
        rh = xp.maximum((r[:, 3] + 1) * scale - 0.5 - top, dtype.type(0.1))
        bw, bh = rw / pw, rh / ph
        # (K, classes, ph, pw): the bin's corner, moved by its part cell's offset
        x0 = (left[:, None, None, None] + xp.arange(pw, dtype=dtype) * bw[:, None, None, None])
        y0 = (top[:, None, None, None]
              + xp.arange(ph, dtype=dtype)[:, None] * bh[:, None, None, None])
        part_y = xp.asarray(np.floor(np.arange(ph) / ph * part).astype(np.int64))
        part_x = xp.asarray(np.floor(np.arange(pw) / pw * part).astype(np.int64))
        if self.no_trans:
            tx = ty = xp.zeros((rois.shape[0], 1, ph, pw), dtype)
        else:
            cells = trans.astype(dtype)[:, :, part_y[:, None], part_x[None, :]]
            tx = cells[:, 0::2] * dtype.type(self.trans_std)  # (K, classes, ph, pw)
            ty = cells[:, 1::2] * dtype.type(self.trans_std)
        x0 = x0 + tx * rw[:, None, None, None]
        y0 = y0 + ty * rh[:, None, None, None]
        step = xp.arange(s, dtype=dtype)
        # (K, classes, ph, pw, s, s): sample (i, j) is row i, column j of the bin's grid
        xs = x0[..., None, None] + (step * (bw / s)[:, None])[:, None, None, None, None, :]
        ys = y0[..., None, None] + (step * (bh / s)[:, None])[:, None, None, None, :, None]
        valid = (xs >= -0.5) & (xs <= w - 0.5) & (ys >= -0.5) & (ys <= h - 0.5)
        xs, ys = xp.clip(xs, 0, w - 1), xp.clip(ys, 0, h - 1)
        return xs, ys, valid, rw, rh, part_y, part_x

    def forward(self, inp, rois, trans):
        xp = xp_of(inp)
        n, c, h, w = self.shape = inp.shape
        classes = 1 if self.no_trans else trans.shape[1] // 2
        xs, ys, valid, rw, rh, part_y, part_x = self._geometry(xp, rois, trans, h, w,
                                                               np.dtype(np.float32))
        x0, y0 = xp.floor(xs).astype(np.int64), xp.floor(ys).astype(np.int64)
        x1, y1 = xp.ceil(xs).astype(np.int64), xp.ceil(ys).astype(np.int64)
        fx, fy = (xs - x0)[..., None], (ys - y0)[..., None]
        batch = rois[:, 0].astype(np.int64)[:, None, None, None, None, None]
        cls = xp.arange(classes)[None, :, None, None, None, None]
        grouped = inp.reshape(n, classes, c // classes, h, w)

        def at(y, x):  # (K, classes, ph, pw, s, s, channels of the class)
            return grouped[batch, cls, :, y, x]

        corners = (at(y0, x0), at(y1, x0), at(y0, x1), at(y1, x1))
        vals = ((1 - fx) * (1 - fy) * corners[0] + (1 - fx) * fy * corners[1]
                + fx * (1 - fy) * corners[2] + fx * fy * corners[3])
        count = valid.sum(axis=(4, 5))  # (K, classes, ph, pw)
        total = (vals * valid[..., None]).sum(axis=(4, 5))  # (K, classes, ph, pw, ch)
        out = total / xp.maximum(count, 1)[..., None]
        self.saved = (xs, ys, valid, count, rw, rh, part_y, part_x, x0, y0, x1, y1, corners,
                      batch, cls, classes)
        k, ph, pw = rois.shape[0], self.pooled[0], self.pooled[1]
        return xp.ascontiguousarray(out.transpose(0, 1, 4, 2, 3).reshape(k, c, ph, pw)
                                    ).astype(inp.dtype)

    def backward(self, g):
        xp = xp_of(g)
        n, c, h, w = self.shape
        (xs, ys, valid, count, rw, rh, part_y, part_x, x0, y0, x1, y1, corners, batch, cls,
         classes) = self.saved
        k, _, ph, pw = g.shape
        per = c // classes
        # each valid sample carries out_diff / count of its bin
        share = g.reshape(k, classes, per, ph, pw).transpose(0, 1, 3, 4, 2).astype(np.float64)
        share = share / xp.maximum(count, 1)[..., None]
        share = share[:, :, :, :, None, None, :] * valid[..., None]  # (K,cl,ph,pw,s,s,per)
        fx, fy = (xs - x0)[..., None], (ys - y0)[..., None]
        chan = xp.arange(per)
        flat_base = (batch * classes + cls)[..., None] * per + chan  # image-channel index
        gimg = xp.zeros(n * c * h * w)
        for y, x, weight in ((y0, x0, (1 - fx) * (1 - fy)), (y1, x0, (1 - fx) * fy),
                             (y0, x1, fx * (1 - fy)), (y1, x1, fx * fy)):
            flat = (flat_base * h + y[..., None]) * w + x[..., None]
            gimg += xp.bincount(xp.broadcast_to(flat, share.shape).ravel(),
                                weights=(share * weight).ravel(), minlength=n * c * h * w)
        ginp = gimg.reshape(self.shape).astype(g.dtype)
        if self.no_trans:
            return ginp, None, None
        u00, u01, u10, u11 = corners  # (y0,x0), (y1,x0), (y0,x1), (y1,x1)
        dx = ((u11 - u01) * fy + (u10 - u00) * (1 - fy)) * share
        dy = ((u11 - u10) * fx + (u01 - u00) * (1 - fx)) * share
        dx = dx.sum(axis=(4, 5, 6)) * self.trans_std * rw[:, None, None, None]  # (K,cl,ph,pw)
        dy = dy.sum(axis=(4, 5, 6)) * self.trans_std * rh[:, None, None, None]
        part = self.part
        gtrans = xp.zeros((k, 2 * classes, part, part))
        cells = (part_y[:, None] * part + part_x[None, :]).ravel()
        for comp, d in ((0, dx), (1, dy)):  # bins of one part cell add up
            flat = ((xp.arange(k)[:, None, None] * 2 * classes
                     + 2 * xp.arange(classes)[None, :, None] + comp) * part * part
                    + cells[None, None, :])
            gtrans.reshape(-1)[:] += xp.bincount(
                flat.ravel(), weights=d.reshape(k, classes, -1).ravel(),
                minlength=gtrans.size)
        return ginp, None, gtrans.astype(g.dtype)


def deformable_psroi_pooling(inp, rois, trans, no_trans, part_size, pooled_h, pooled_w,
                             sample_per_part, spatial_scale, trans_std=0.1):
    """Deformable position-sensitive roi pooling: (K, C, pooled_h, pooled_w) of the ``rois``
    (K, 5) = (batch, x1, y1, x2, y2), as upstream's DeformablePSROIPooling.

    Each bin averages ``sample_per_part`` x ``sample_per_part`` bilinear samples of its
    channel. With ``no_trans=False`` the bins of part cell (i, j) of a ``part_size`` x
    ``part_size`` grid move by ``trans[k, 2*cls:2*cls+2, i, j] * trans_std`` times the roi's
    width and height, where ``cls`` numbers the ``trans.shape[1] // 2`` equal groups of
    channels; ``trans`` must be 4-d (any shape when ``no_trans``). As upstream, ``trans`` may
    have more than K rows: roi k reads row k, the others are unused (their gradient is zero).
    Upstream itself accepts only ``trans`` of shape (K, 2, pooled_h, pooled_w), which its
    kernel reads in memory order as (K, 2, part_size, part_size) rows: where the two differ,
    that shape is read so here too (the values past the rows read get a zero gradient).
    Differentiable in ``inp`` and ``trans``. float32 only, as upstream.
    """
    what = "deformable_psroi_pooling"
    inp, rois, trans = _tensor(inp), _tensor(rois), _tensor(trans)
    if inp.dtype.metadata is not None:  # a quantized tensor: its values
        inp = inp.astype(np.float32)
    if inp.ndim != 4 or inp.dtype != np.float32:
        raise ValueError(f"{what}: inp must be a float32 (N, C, H, W) tensor, got {inp.dtype} "
                         f"of shape {inp.shape}")
    rois = _check_rois(what, inp, rois)
    pooled_h, pooled_w, part, samples = (_int(v, name, what, follows=False) for v, name in (
        (pooled_h, "pooled_h"), (pooled_w, "pooled_w"), (part_size, "part_size"),
        (sample_per_part, "sample_per_part")))
    if min(pooled_h, pooled_w, part, samples) < 1:
        raise ArgumentError(f"{what}: pooled_h, pooled_w, part_size and sample_per_part must "
                            f"be positive, got {pooled_h}, {pooled_w}, {part}, {samples}")
    if trans.ndim != 4:
        raise ShapeError(f"{what}: trans must be 4-d (K, 2 * classes, part_size, part_size), "
                         f"got shape {trans.shape}")
    if not no_trans:
        k = rois.shape[0]
        if trans.shape[1:] == (2, pooled_h, pooled_w) and (pooled_h, pooled_w) != (part, part):
            # upstream checks this shape, (K, 2, pooled_h, pooled_w), and its kernel reads the
            # memory as (K, 2, part_size, part_size): read here as there
            need = k * 2 * part * part
            if trans.size < need:
                raise ValueError(
                    f"{what}: trans of shape {trans.shape} is read as upstream's kernel reads "
                    f"it, {k} rows of (2, part_size={part}, part_size={part}) in memory order, "
                    f"and holds {trans.size} values, fewer than the {need} that {k} rois read "
                    f"(upstream reads past its end); give trans of shape ({k}, 2, {part}, "
                    f"{part})")
            trans = trans.reshape(-1)[:need].reshape(k, 2, part, part)
        if trans.shape[0] > k:  # upstream's kernel reads row k for roi k; later rows are unused
            trans = trans[:k]
        if (trans.shape[0] != k or trans.shape[1] < 2 or trans.shape[1] % 2
                or trans.shape[2:] != (part, part) or inp.shape[1] % (trans.shape[1] // 2)):
            raise ShapeError(
                f"{what}: trans must be (K={k} or more, 2 * classes, part_size={part}, "
                f"part_size={part}) with classes dividing the {inp.shape[1]} channels, got "
                f"shape {trans.shape}")
        trans = trans if trans.dtype == np.float32 else _astype_real(trans, np.float32, what)
    op = _DeformablePSROIPooling(bool(no_trans), part, (pooled_h, pooled_w), samples,
                                 _real(spatial_scale, "spatial_scale", what),
                                 _real(trans_std, "trans_std", what))
    return apply(op, inp, rois, trans)
