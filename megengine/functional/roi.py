"""Region pooling (F.vision.roi_align, F.vision.roi_pooling): forward and backward per op.

Split out of vision.py, which re-exports both, as upstream spells them F.vision.<name>.
"""
import numpy as np

from ..core.dispatch import Op, apply
from ..core.ops import xp_of
from ._args import _pair, _tensor

__all__ = ["roi_align", "roi_pooling"]

# ----- region pooling: roi_align, roi_pooling -----
# ``rois`` is (K, 5): (batch index, x1, y1, x2, y2) in input pixels before ``scale``.

def _check_rois(what, inp, rois):
    if inp.ndim != 4:
        raise ValueError(f"{what}: inp must be (N, C, H, W), got shape {inp.shape}")
    if rois.ndim != 2 or rois.shape[1] != 5:
        raise ValueError(f"{what}: rois must be (K, 5) rows of (batch, x1, y1, x2, y2), got "
                         f"shape {rois.shape}")
    batch = rois._peek()[:, 0].astype(np.int64)  # a check only: unseen by jit.trace
    if batch.size and (batch.min() < 0 or batch.max() >= inp.shape[0]):
        raise ValueError(f"{what}: roi batch indices must be in [0, {inp.shape[0]}), got "
                         f"{sorted(set(batch.tolist()))}")


def _linear_weights(xp, pos, n):
    """(K, S, n): row s holds the weights that linearly interpolate position ``pos[k, s]``
    along an axis of length ``n``; neighbours outside the axis count as zero (megdnn)."""
    i0 = xp.floor(pos)
    f = pos - i0
    i0 = i0.astype(np.int64)
    grid = xp.arange(n)
    return ((i0[..., None] == grid) * (1 - f)[..., None]
            + ((i0 + 1)[..., None] == grid) * f[..., None])


class _ROIAlign(Op):
    """Bilinear samples on a (sample_h, sample_w) grid in each of (ph, pw) bins of every roi,
    averaged or maxed per bin. Sampling is separable: samples = Wy @ img @ Wx^T per roi."""

    def __init__(self, mode, scale, offset, pooled, samples):
        self.mode, self.scale, self.offset = mode, scale, offset
        self.pooled, self.samples = pooled, samples

    def forward(self, img, rois):
        xp = xp_of(img)
        n, c, h, w = self.img_shape = img.shape
        (ph, pw), (sh, sw) = self.pooled, self.samples
        r = rois.astype(np.float64)
        self.batch = batch = r[:, 0].astype(np.int64)
        start = r[:, 1:3] * self.scale - self.offset  # (x, y)
        size = xp.maximum(r[:, 3:5] * self.scale - self.offset - start, 0)

        def positions(k_start, k_size, bins, per_bin):
            steps = (xp.arange(bins)[:, None] + (xp.arange(per_bin) + 0.5) / per_bin).ravel()
            return k_start[:, None] + (k_size / bins)[:, None] * steps  # (K, bins * per_bin)

        self.wy = _linear_weights(xp, positions(start[:, 1], size[:, 1], ph, sh), h)
        self.wx = _linear_weights(xp, positions(start[:, 0], size[:, 0], pw, sw), w)
        wy, wx = self.wy.astype(img.dtype), self.wx.astype(img.dtype)
        # (K, 1, S, H) @ (K, C, H, W) @ (K, 1, W, T): two batched BLAS products
        samples = (wy[:, None] @ img[batch]) @ xp.swapaxes(wx, 1, 2)[:, None]
        k = rois.shape[0]
        samples = samples.reshape(k, c, ph, sh, pw, sw).transpose(0, 1, 2, 4, 3, 5)
        samples = samples.reshape(k, c, ph, pw, sh * sw)
        if self.mode == "average":
            return samples.mean(axis=-1)
        self.arg = samples.argmax(axis=-1)
        return xp.take_along_axis(samples, self.arg[..., None], -1)[..., 0]

    def backward(self, g):
        xp = xp_of(g)
        k, c = g.shape[:2]
        (ph, pw), (sh, sw) = self.pooled, self.samples
        if self.mode == "average":
            gs = xp.broadcast_to((g / (sh * sw))[..., None], g.shape + (sh * sw,))
        else:
            gs = (self.arg[..., None] == xp.arange(sh * sw)) * g[..., None]
        gs = gs.reshape(k, c, ph, pw, sh, sw).transpose(0, 1, 2, 4, 3, 5)
        gs = gs.reshape(k, c, ph * sh, pw * sw)
        wy, wx = self.wy.astype(g.dtype), self.wx.astype(g.dtype)
        per_roi = (xp.swapaxes(wy, 1, 2)[:, None] @ gs) @ wx[:, None]  # (K, C, H, W)
        # rois of one image add up: a (N, K) one-hot product instead of a scatter-add
        onehot = (xp.arange(self.img_shape[0])[:, None] == self.batch).astype(g.dtype)
        gimg = (onehot @ per_roi.reshape(k, -1)).reshape(self.img_shape)
        return gimg, None


def _positive_pair(value, name, what):
    pair = _pair(value, name, what)
    if min(pair) < 1:
        raise ValueError(f"{what}: {name} must be positive, got {value!r}")
    return pair


def roi_align(inp, rois, output_shape, mode="average", spatial_scale=1.0, sample_points=2,
              aligned=True):
    """RoIAlign: (K, C, ph, pw) features of the ``rois`` (K, 5) = (batch, x1, y1, x2, y2).

    Each of the ph x pw bins of a roi (scaled by ``spatial_scale``; shifted by -0.5 when
    ``aligned``) averages (``mode="average"``) or maxes (``"max"``) ``sample_points`` (an int
    or (h, w)) bilinear samples on a regular grid; samples outside the image read zeros.
    Differentiable in ``inp``.
    """
    inp, rois = _tensor(inp), _tensor(rois)
    _check_rois("roi_align", inp, rois)
    mode = str(mode).lower()
    if mode not in ("average", "max"):
        raise ValueError(f"roi_align: mode must be 'average' or 'max', got {mode!r}")
    pooled = _positive_pair(output_shape, "output_shape", "roi_align")
    samples = _positive_pair(sample_points, "sample_points", "roi_align")
    inp = inp if inp.dtype == np.float32 else inp.astype(np.float32)
    op = _ROIAlign(mode, float(spatial_scale), 0.5 if aligned else 0.0, pooled, samples)
    return apply(op, inp, rois)


def _round_half_away(xp, x):
    return xp.sign(x) * xp.floor(xp.abs(x) + 0.5)


class _ROIPooling(Op):
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

    def backward(self, g):
        xp = xp_of(g)
        n, c, h, w = self.img_shape
        k, _, ph, pw = g.shape
        gl = g.transpose(0, 2, 3, 1)  # (K, ph, pw, C)
        cidx = xp.arange(c)
        if self.mode == "average":
            batch, ysel, xsel, valid, count = self.index
            bh, bw = ysel.shape[3], xsel.shape[4]
            share = (gl / xp.maximum(count, 1))[:, :, :, None, :] * valid  # (K,ph,pw,bh*bw,C)
            share = share.reshape(k, ph, pw, bh, bw, c)
            ys = xp.broadcast_to(ysel[..., None], (k, ph, pw, bh, bw, 1))
            xs = xp.broadcast_to(xsel[..., None], (k, ph, pw, bh, bw, 1))
            bs = batch.reshape(k, 1, 1, 1, 1, 1)
        else:
            batch, ys, xs, has = self.index
            share = gl * has  # ys, xs: (K, ph, pw, C), the source pixel of each output
            bs = batch.reshape(k, 1, 1, 1)
        flat = ((bs * c + cidx) * h + ys) * w + xs
        flat = xp.broadcast_to(flat, share.shape)
        gimg = xp.bincount(flat.ravel(), weights=share.ravel(), minlength=n * c * h * w)
        return gimg.astype(g.dtype).reshape(self.img_shape), None


def roi_pooling(inp, rois, output_shape, mode="max", scale=1.0):
    """RoI pooling: (K, C, ph, pw) features of the ``rois`` (K, 5) = (batch, x1, y1, x2, y2).

    Roi corners are scaled by ``scale`` and rounded; each of the ph x pw bins takes the max
    (``mode="max"``) or mean (``"average"``) of its pixels, 0 for an empty bin.
    Differentiable in ``inp``.
    """
    inp, rois = _tensor(inp), _tensor(rois)
    _check_rois("roi_pooling", inp, rois)
    mode = str(mode).lower()
    if mode not in ("max", "average"):
        raise ValueError(f"roi_pooling: mode must be 'max' or 'average', got {mode!r}")
    pooled = _positive_pair(output_shape, "output_shape", "roi_pooling")
    inp = inp if inp.dtype.kind == "f" else inp.astype(np.float32)
    return apply(_ROIPooling(mode, float(scale), pooled), inp, rois)
