"""Fuzz generators for megengine.data.transform (vision): Normalize, Resize, Pad, CenterCrop,
ToMode, flips, RandomResizedCrop, the ColorJitter pieces and Compose chains of them, on images,
coords and masks, against the OpenCV calls upstream makes where cv2 is importable (all five
interpolations, copyMakeBorder, cvtColor; plus F.resize and F.pad alone on any dtype and channel
count), else hand oracles of upstream's documented behaviour (OpenCV's linear and nearest resize
as torch's interpolate); the random transforms replayed from a fixed seed, and their draws
checked by seeded statistics."""
import math

import numpy as np
import torch

try:  # the oracle upstream's transforms call; optional (hand oracles without it)
    import cv2
except ImportError:  # pragma: no cover
    cv2 = None

import megengine.data.transform as T
from megengine.data.transform.vision import functional as VF

from .gen import Check, Mismatch, close, pick, registry
from .random_stats import Z

OPS, op = registry("transform")

_ORDER = ("image", "coords", "mask", "boxes")  # (samples of three leave boxes out)


def _sample(rng, dt=None, hw=None):
    h, w = hw or (int(rng.integers(1, 9)), int(rng.integers(1, 9)))
    c = pick(rng, [1, 3])
    dt = dt or pick(rng, ["uint8", "float32"])
    img = (rng.integers(0, 256, size=(h, w, c)) if dt == "uint8" else
           rng.uniform(0, 255, size=(h, w, c))).astype(dt)
    coords = np.stack([rng.uniform(0, w, 4), rng.uniform(0, h, 4)], 1).astype(np.float32)
    mask = rng.integers(0, 5, size=(h, w, 1)).astype(np.uint8)
    return img, coords, mask


# the interpolations drawn: OpenCV's five with cv2 as the oracle, else the two torch can check
_INTERPS = [VF.INTER_LINEAR, VF.INTER_NEAREST] + (
    [VF.INTER_CUBIC, VF.INTER_AREA, VF.INTER_LANCZOS4, VF.INTER_LINEAR_EXACT,
     VF.INTER_NEAREST_EXACT] if cv2 is not None else [])


def _resize_tol(interp):
    """Levels a uint8 resize may be off: none against cv2, except cubic, which OpenCV's x86-64
    wheels give to Intel IPP (unpublished arithmetic: sums near a half may round either way);
    one against torch's float64 sums (OpenCV rounds in 11-bit fixed point)."""
    return 0 if cv2 is not None and interp != VF.INTER_CUBIC else 1


def _resize_ref(img, th, tw, interp):
    """cv2.resize as upstream calls it, where cv2 is importable; else OpenCV's resize by hand:
    INTER_LINEAR centres aligned (src = (dst + 0.5) * in / out - 0.5, clamped), INTER_NEAREST
    src = floor(dst * in / out): torch's bilinear (align_corners False, no antialiasing) and
    legacy nearest; integer images rounded and saturated."""
    if cv2 is not None:
        return cv2.resize(img, (tw, th), interpolation=interp).reshape(th, tw, -1)
    t = torch.from_numpy(np.ascontiguousarray(img, np.float64)).permute(2, 0, 1)[None]
    mode = "nearest" if interp == VF.INTER_NEAREST else "bilinear"
    kw = {} if mode == "nearest" else {"align_corners": False}
    out = torch.nn.functional.interpolate(t, size=(th, tw), mode=mode, **kw)[0].permute(1, 2, 0)
    out = out.numpy()
    if img.dtype == np.uint8:
        out = np.clip(np.rint(out), 0, 255)
    return out


def _compare(desc, got, want, int_tol=0):
    """Outputs of a sample (tuples) against the oracle's: shapes, dtypes, values (``int_tol``:
    how far the integer pixels of the image, output 0, may be off)."""
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    if len(got) != len(want):
        raise Mismatch(f"{desc}: {len(got)} outputs, the oracle gives {len(want)}")
    for k, (g, w) in enumerate(zip(got, want)):
        g, w = np.asarray(g), np.asarray(w)
        if g.shape != w.shape:
            raise Mismatch(f"{desc}: output {k} shape {g.shape}, oracle {w.shape}")
        if g.dtype != w.dtype:
            raise Mismatch(f"{desc}: output {k} dtype {g.dtype}, oracle {w.dtype}")
        if g.dtype.kind in "iu":
            tol = int_tol if k == 0 else 0
            if g.size and np.abs(g.astype(np.int64) - w.astype(np.int64)).max() > tol:
                raise Mismatch(f"{desc}: output {k} differs\n ours={g.ravel()[:12]}\n "
                               f"oracle={w.ravel()[:12]}")
        else:
            close(g, w, (1e-5, 1e-3), f"{desc}: output {k}")
    return "ok"


# ----- deterministic transforms -----

def _normalize(rng):
    c = pick(rng, [1, 3])
    mean = float(rng.uniform(0, 200)) if rng.random() < 0.4 else \
        [float(v) for v in rng.uniform(0, 200, c)]
    std = float(rng.uniform(1, 80)) if rng.random() < 0.4 else \
        [float(v) for v in rng.uniform(1, 80, c)]
    return (f"Normalize(mean={mean}, std={std})", T.Normalize(mean, std, order=_ORDER),
            lambda img, co, m: (((img.astype(np.float64) - np.asarray(mean)) /
                                 np.asarray(std)).astype(np.float32), co, m), c)


def _resize(rng):
    interp = pick(rng, _INTERPS)
    size = int(rng.integers(1, 9)) if rng.random() < 0.4 else \
        (int(rng.integers(1, 9)), int(rng.integers(1, 9)))

    def ref(img, co, m):
        h, w = img.shape[:2]
        if isinstance(size, int):  # the shorter edge becomes size, the aspect ratio kept
            if min(h, w) == size:
                return img, co, m
            th, tw = (size, int(size * w / h)) if h < w else (int(size * h / w), size)
        else:
            th, tw = size
        if (th, tw) == (h, w):
            return img, co, m
        out = _resize_ref(img, th, tw, interp).astype(img.dtype)
        co = (co * np.array([tw / w, th / h])).astype(co.dtype)
        return out, co, _resize_ref(m, th, tw, VF.INTER_NEAREST).astype(m.dtype)
    return f"Resize({size}, interpolation={interp})", \
        T.Resize(size, interp, order=_ORDER), ref, None


def _pad(rng):
    r = rng.random()
    size = int(rng.integers(0, 3)) if r < 0.3 else \
        tuple(int(v) for v in rng.integers(0, 3, size=2 if r < 0.6 else 4))
    c = pick(rng, [1, 3])
    value = pick(rng, [0, 7, 2.5, [1, 2, 3][:c] if c > 1 else 9, [1.5, 2.5, 3.5][:c], [300, -4]])
    mask_value = int(rng.integers(0, 4))
    top, bottom, left, right = ((size,) * 4 if isinstance(size, int) else
                                (0, size[0], 0, size[1]) if len(size) == 2 else size)

    def ref(img, co, m):
        if np.asarray(value).dtype == np.float64:  # a float border value: a float32 image
            img = img.astype(np.float32)
        out = _border(img, (top, bottom, left, right), value)
        mo = np.full((m.shape[0] + top + bottom, m.shape[1] + left + right, 1), mask_value,
                     m.dtype)
        mo[top:top + m.shape[0], left:left + m.shape[1]] = m
        return out, (co + np.array([left, top])).astype(co.dtype), mo
    return (f"Pad({size}, value={value}, mask_value={mask_value})",
            T.Pad(size, value, mask_value, order=_ORDER), ref, c)


def _border(img, sizes, value):
    """cv2.copyMakeBorder(BORDER_CONSTANT) where cv2 is importable, else by hand: ``value`` is
    an OpenCV Scalar (a number fills the first channel only; missing channels get 0), rounded
    half to even and saturated for integer images."""
    if cv2 is not None:
        out = cv2.copyMakeBorder(img, *sizes, cv2.BORDER_CONSTANT, value=value)
        return out.reshape(out.shape[0], out.shape[1], -1)
    top, bottom, left, right = sizes
    scalar = np.zeros(4)
    flat = np.atleast_1d(np.asarray(value, np.float64))
    scalar[:flat.size] = flat
    fill = scalar[:img.shape[2]]
    if img.dtype.kind in "iu":
        fill = np.clip(np.rint(fill), np.iinfo(img.dtype).min, np.iinfo(img.dtype).max)
    out = np.empty((img.shape[0] + top + bottom, img.shape[1] + left + right, img.shape[2]),
                   img.dtype)
    out[...] = fill
    out[top:top + img.shape[0], left:left + img.shape[1]] = img
    return out


def _center_crop(rng):
    size = int(rng.integers(1, 6)) if rng.random() < 0.4 else \
        (int(rng.integers(1, 6)), int(rng.integers(1, 6)))
    th, tw = (size, size) if isinstance(size, int) else size

    def ref(img, co, m):
        h, w = img.shape[:2]
        if th > h or tw > w:
            raise ValueError("bigger than the image")
        x, y = int(round((w - tw) / 2.0)), int(round((h - th) / 2.0))  # (half to even)
        return img[y:y + th, x:x + tw], (co - np.array([x, y])).astype(co.dtype), \
            m[y:y + th, x:x + tw]
    return f"CenterCrop({size})", T.CenterCrop(size, order=_ORDER), ref, None


def _to_mode(rng):
    return "ToMode('CHW')", T.ToMode(order=_ORDER), \
        lambda img, co, m: (np.moveaxis(img, 2, 0), co, np.moveaxis(m, 2, 0)), None


_DETERMINISTIC = {"Normalize": _normalize, "Resize": _resize, "Pad": _pad,
                  "CenterCrop": _center_crop, "ToMode": _to_mode}


def _boxes_ref(ref, sample, boxes):
    """Boxes (xyxy) as upstream moves them: the four corners through the coords mapping,
    then their bounding box."""
    corners = boxes[:, [0, 1, 2, 1, 0, 3, 2, 3]].reshape(-1, 2)
    moved = ref(sample[0], corners, sample[2])[1].reshape(-1, 4, 2)
    return np.concatenate([moved.min(1), moved.max(1)], 1).astype(boxes.dtype)


def _run(desc, transform, ref, sample):
    co = sample[1]
    boxes = np.concatenate([np.minimum(co[:2], co[2:]), np.maximum(co[:2], co[2:])], 1)
    try:
        want = ref(*sample) + (_boxes_ref(ref, sample, boxes),)
    except ValueError:
        want = None
    sample = sample + (boxes,)
    try:
        got = transform.apply(sample)
    except (ValueError, TypeError) as e:
        if want is None:
            return "error"
        raise Mismatch(f"{desc}: raised {type(e).__name__}: {e}; the oracle computes it") from e
    if want is None:
        raise Mismatch(f"{desc}: accepted what upstream refuses (a crop bigger than the image)")
    # a uint8 image resized: see _resize_tol
    tol = max([_resize_tol(i) for i in _INTERPS if f"interpolation={i})" in desc] or [0])
    return _compare(desc, got, want, int_tol=tol)


def _deterministic_case(name):
    def gen(rng):
        desc, transform, ref, c = _DETERMINISTIC[name](rng)
        img, co, m = _sample(rng)
        if c is not None and img.shape[2] != c:
            img = np.repeat(img[:, :, :1], c, axis=2)
        d = f"{desc} on image{img.shape} {img.dtype}"
        return Check(d, lambda: _run(d, transform, ref, (img, co, m)))
    return gen


for _name in _DETERMINISTIC:
    op(_name)(_deterministic_case(_name))


@op("Compose")
def _compose(rng):
    """A chain of the deterministic transforms against the chain of their oracles (ToMode, if
    drawn, last: the others need HWC)."""
    names = [pick(rng, ["Normalize", "Resize", "Pad", "CenterCrop"])
             for _ in range(int(rng.integers(1, 4)))]
    parts = [_DETERMINISTIC[n](rng) for n in names]
    if rng.random() < 0.3:
        parts.append(_to_mode(rng))
    c = next((p[3] for p in parts if p[3] is not None), None)
    # a uint8 image resized linearly may be a step off (see _run); Normalize would magnify it
    dt = "float32" if "Resize" in names else None
    img, co, m = _sample(rng, dt, hw=(int(rng.integers(3, 9)), int(rng.integers(3, 9))))
    if c is not None:
        img = np.repeat(img[:, :, :1], c, axis=2)
    for p in parts:  # per-channel arguments of two transforms must agree
        if p[3] is not None and p[3] != img.shape[2]:
            return _compose(rng)
    compose = T.Compose([p[1] for p in parts], order=_ORDER)

    def ref(*s):
        for p in parts:
            s = p[2](*s)
        return s
    desc = f"Compose([{', '.join(p[0] for p in parts)}]) on image{img.shape} {img.dtype}"
    return Check(desc, lambda: _run(desc, compose, ref, (img, co, m)))


# ----- random transforms: replayed from a seed, and their draws' statistics -----

def _rrc_window(height, width, scale, ratio):
    """Upstream's RandomResizedCrop draw (numpy's global generator, the calls in its order):
    10 tries of an area fraction and a log-uniform aspect ratio, then a central crop."""
    area = height * width
    for _ in range(10):
        target = np.random.uniform(*scale) * area
        aspect = math.exp(np.random.uniform(*(math.log(r) for r in ratio)))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return np.random.randint(0, width - w + 1), np.random.randint(0, height - h + 1), w, h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    # (ours keeps one pixel where upstream's rounding empties the window and cv2.resize fails)
    w, h = max(w, 1), max(h, 1)
    return (width - w) // 2, (height - h) // 2, w, h


@op("RandomResizedCrop")
def _random_resized_crop(rng):
    out = int(rng.integers(1, 6)) if rng.random() < 0.4 else \
        (int(rng.integers(1, 6)), int(rng.integers(1, 6)))
    lo = float(rng.uniform(0.05, 0.9))
    scale = (lo, float(rng.uniform(lo, 1.0)))
    rlo = float(rng.uniform(0.3, 1.0))
    ratio = (rlo, float(rng.uniform(rlo, 3.0)))
    interp = pick(rng, _INTERPS)
    img, co, m = _sample(rng, hw=(int(rng.integers(1, 12)), int(rng.integers(1, 12))))
    seed = int(rng.integers(2 ** 31))
    oh, ow = (out, out) if isinstance(out, int) else out
    desc = (f"RandomResizedCrop({out}, scale={scale}, ratio={ratio}, interpolation={interp}) "
            f"on image{img.shape} {img.dtype}, seed {seed}")

    def fn():
        np.random.seed(seed)
        x, y, w, h = _rrc_window(img.shape[0], img.shape[1], scale, ratio)
        want = (_resize_ref(img[y:y + h, x:x + w], oh, ow, interp).astype(img.dtype),
                ((co - np.array([x, y])) * np.array([ow / w, oh / h])).astype(co.dtype),
                _resize_ref(m[y:y + h, x:x + w], oh, ow, VF.INTER_NEAREST).astype(m.dtype))
        np.random.seed(seed)
        got = T.RandomResizedCrop(out, scale, ratio, interp, order=_ORDER).apply((img, co, m))
        return _compare(desc, got, want, int_tol=_resize_tol(interp))
    return Check(desc, fn)


def _binomial_ok(hits, n, p, z=Z):
    # at random_stats.Z sigmas a correct transform fails a test about once in 5e8; at 4.5
    # (~7e-6 a test) a sweep of 500 seeds (3000 tests of RandomResizedCrop_stats) raised a false
    # alarm: seed 30299's 191 of 300 log ratios below the median, 4.7 sigmas, where 3000 draws
    # of that range from other seeds sit at 0.48-0.51
    return abs(hits - n * p) <= z * math.sqrt(n * p * (1 - p)) + 1


@op("RandomResizedCrop_stats")
def _rrc_stats(rng):
    """The crop windows' area fractions are uniform over ``scale`` and their log aspect ratios
    uniform over log ``ratio`` (ranges drawn where no try fails, so no draw is rejected): the
    counts below each range's midpoint and quartiles are binomial."""
    lo = float(rng.uniform(0.05, 0.3))
    scale = (lo, float(rng.uniform(lo + 0.05, 0.45)))
    ratio = (float(rng.uniform(0.6, 0.9)), float(rng.uniform(1.1, 1.6)))
    side, n = 200, 500  # (500: the quartile tests keep their power at 6 sigmas)
    seed = int(rng.integers(2 ** 31))
    desc = f"RandomResizedCrop statistics: scale={scale}, ratio={ratio}, {n} draws, seed {seed}"

    def fn():
        np.random.seed(seed)
        t = T.RandomResizedCrop(8, scale, ratio, order=("image", "coords"))
        img = np.zeros((side, side, 1), np.uint8)
        probe = np.array([[0.0, 0.0], [1.0, 1.0]])
        areas, logr = [], []
        for _ in range(n):
            _, c = t.apply((img, probe))
            # coords map as (p - origin) * out / size: two probes give the window
            w, h = 8 / (c[1, 0] - c[0, 0]), 8 / (c[1, 1] - c[0, 1])
            x, y = -c[0, 0] * w / 8, -c[0, 1] * h / 8
            if not (0 <= x <= side - w + 1e-6 and 0 <= y <= side - h + 1e-6):
                raise Mismatch(f"{desc}: window ({x}, {y}, {w}, {h}) leaves the image")
            areas.append(w * h / side ** 2)
            logr.append(math.log(w / h))
        areas, logr = np.array(areas), np.array(logr)
        # rounding w and h to ints moves a fraction by at most ~2 / side
        if areas.min() < scale[0] - 0.02 or areas.max() > scale[1] + 0.02:
            raise Mismatch(f"{desc}: area fractions {areas.min():.3f}..{areas.max():.3f} "
                           "outside scale")
        for vals, (a, b) in ((areas, scale), (logr, tuple(math.log(r) for r in ratio))):
            for q in (0.25, 0.5, 0.75):
                hits = int((vals < a + q * (b - a)).sum())
                if not _binomial_ok(hits, n, q):
                    raise Mismatch(f"{desc}: {hits} of {n} draws below the {q} quantile of "
                                   f"({a:.3f}, {b:.3f})")
        return "ok"
    return Check(desc, fn)


@op("RandomFlip")
def _random_flip(rng):
    horizontal = bool(rng.random() < 0.5)
    prob = float(pick(rng, [0.0, 0.3, 0.5, 1.0]))
    img, co, m = _sample(rng)
    seed, n = int(rng.integers(2 ** 31)), 200
    kind = "Horizontal" if horizontal else "Vertical"
    desc = f"Random{kind}Flip({prob}) on image{img.shape}, seed {seed}"

    def fn():
        np.random.seed(seed)
        t = (T.RandomHorizontalFlip if horizontal else T.RandomVerticalFlip)(prob, order=_ORDER)
        flipped = 0
        for _ in range(n):
            got = t.apply((img, co, m))
            ax = 1 if horizontal else 0
            fimg, fm = np.flip(img, ax), np.flip(m, ax)
            fco = co.copy()
            # x against the width (y against the height): x -> w - x
            fco[:, 1 - ax] = img.shape[ax] - co[:, 1 - ax]
            same = all(np.array_equal(a, b) for a, b in zip(got, (img, co, m)))
            if all(np.array_equal(a, b) for a, b in zip(got, (fimg, fco, fm))):
                flipped += 1
            elif not same:
                raise Mismatch(f"{desc}: a sample neither flipped nor left as it was")
        sym = all(np.array_equal(a, b) for a, b in zip((img, co, m), (fimg, fco, fm)))
        if not sym and not _binomial_ok(flipped, n, prob):
            raise Mismatch(f"{desc}: {flipped} of {n} samples flipped")
        return "ok"
    return Check(desc, fn)


# ----- colour: brightness, contrast, saturation (ColorJitter's pieces) -----

def _gray(img):
    """The gray of a float32 image by numpy's dot product of the weights: a float32 unit from
    OpenCV's fused multiply-adds now and then (upstream's, docs/compatibility.rst), which the
    uint8 cast after a saturation or contrast blend can make a level (fuzz seeds 117492,
    117494: a level allowed for each; tests/fuzz/upstream_data.py compares with upstream to
    the level)."""
    g = img[:, :, :3].astype(np.float32) @ np.array([0.114, 0.587, 0.299], np.float32)
    return g[:, :, None]


_DEGENERATE = {"brightness": lambda img: 0.0,
               # (a Python float: upstream's numpy 1.x scales the float32 mean in float64)
               "contrast": lambda img: float(_gray(img).mean() if img.shape[2] == 3
                                             else img.mean()),
               "saturation": lambda img: _gray(img) if img.shape[2] == 3 else img}
_CLASSES = {"brightness": T.BrightnessTransform, "contrast": T.ContrastTransform,
            "saturation": T.SaturationTransform}


def _blend(name, img, alpha):
    """Upstream's blend: ``image * alpha + degenerate * (1 - alpha)`` in float32, clipped to
    [0, 255] and cast back (integers truncated, as numpy's astype)."""
    f = img.astype(np.float32)
    return (f * alpha + _DEGENERATE[name](f) * (1 - alpha)).clip(0, 255).astype(img.dtype)


@op("ColorJitter")
def _color_jitter(rng):
    pieces = [n for n in _CLASSES if rng.random() < 0.6] or ["brightness"]
    values = {n: (float(rng.uniform(0, 1)) if rng.random() < 0.6 else
                  tuple(sorted(float(v) for v in rng.uniform(0, 2, 2)))) for n in pieces}
    img, _, _ = _sample(rng)
    img = np.repeat(img[:, :, :1], 3, axis=2) if rng.random() < 0.2 else img
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    seed = int(rng.integers(2 ** 31))
    alone = len(pieces) == 1 and rng.random() < 0.5
    desc = (f"{'Color' + 'Jitter' if not alone else _CLASSES[pieces[0]].__name__}({values}) on "
            f"image{img.shape} {img.dtype}, seed {seed}")

    def rng_range(v):
        return (max(0.0, 1 - v), 1 + v) if isinstance(v, float) else v

    def fn():
        np.random.seed(seed)
        # ColorJitter's Compose first permutes its pieces (in its fixed order: brightness,
        # contrast, saturation), then each draws its factor
        order = pieces if alone else [pieces[i] for i in np.random.permutation(len(pieces))]
        want = img
        for n in order:
            lo, hi = rng_range(values[n])
            if (lo, hi) != (1.0, 1.0):
                want = _blend(n, want, np.random.uniform(lo, hi))
        np.random.seed(seed)
        t = (_CLASSES[pieces[0]](values[pieces[0]]) if alone else
             T.ColorJitter(**{n: values[n] for n in pieces}))
        # (a level for each piece that blends with the gray, `_gray`, which a brightness
        # factor of up to 2 after it scales)
        grays = len({"contrast", "saturation"} & set(pieces))
        return _compare(desc, t.apply(img), want,
                        int_tol=grays * (2 if "brightness" in pieces else 1))
    return Check(desc, fn)


@op("ColorJitter_stats")
def _jitter_stats(rng):
    """Brightness factors are uniform over [max(0, 1 - v), 1 + v]: a constant float image of
    100 comes back as 100 * factor; the count below each quartile is binomial."""
    v = float(rng.uniform(0.05, 1.5))
    seed, n = int(rng.integers(2 ** 31)), 300
    desc = f"BrightnessTransform({v}) factors, {n} draws, seed {seed}"

    def fn():
        np.random.seed(seed)
        t = T.BrightnessTransform(v)
        img = np.full((1, 1, 3), 100.0, np.float32)
        f = np.array([t.apply(img)[0, 0, 0] / 100.0 for _ in range(n)])
        lo, hi = max(0.0, 1 - v), 1 + v
        hi_clip = min(hi, 2.55)  # (the output is clipped to 255)
        if f.min() < lo - 1e-6 or f.max() > hi_clip + 1e-6:
            raise Mismatch(f"{desc}: factors {f.min():.3f}..{f.max():.3f} outside ({lo}, {hi})")
        for q in (0.25, 0.5, 0.75):
            edge = lo + q * (hi - lo)
            if edge < hi_clip and not _binomial_ok(int((f < edge).sum()), n, q):
                raise Mismatch(f"{desc}: {(f < edge).sum()} of {n} factors below the {q} "
                               f"quantile {edge:.3f}")
        return "ok"
    return Check(desc, fn)


# ----- hue: OpenCV's HSV_FULL conversions, pixel by pixel -----

def _cv_bgr2hsv(img):
    """OpenCV's RGB2HSV_b (hrange 256): 12-bit reciprocal tables, integer arithmetic."""
    if cv2 is not None:
        return cv2.cvtColor(img, cv2.COLOR_BGR2HSV_FULL)
    sdiv = [0] + [int(np.rint((255 << 12) / i)) for i in range(1, 256)]
    hdiv = [0] + [int(np.rint((256 << 12) / (6.0 * i))) for i in range(1, 256)]
    out = np.zeros(img.shape, np.uint8)
    for idx in np.ndindex(img.shape[:2]):
        b, g, r = (int(c) for c in img[idx])
        v, diff = max(b, g, r), max(b, g, r) - min(b, g, r)
        s = (diff * sdiv[v] + 2048) >> 12
        h = g - b if v == r else b - r + 2 * diff if v == g else r - g + 4 * diff
        h = (h * hdiv[diff] + 2048) >> 12
        out[idx] = (h + 256 if h < 0 else h, s, v)
    return out


def _cv_hsv2bgr(hsv):
    """OpenCV's HSV2RGB_b: float32 steps (h * 6/255: the way back reads the hue on 0..255;
    s and v / 255), then * 255 rounded."""
    if cv2 is not None:
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR_FULL)
    f = np.float32
    sectors = [(1, 3, 0), (1, 0, 2), (3, 0, 1), (0, 2, 1), (0, 1, 3), (2, 1, 0)]
    out = np.zeros(hsv.shape, np.uint8)
    for idx in np.ndindex(hsv.shape[:2]):
        h = f(hsv[idx][0]) * f(6.0 / 255)
        s, v = f(hsv[idx][1]) * f(1 / 255), f(hsv[idx][2]) * f(1 / 255)
        if s == 0:
            bgr = (v, v, v)
        else:
            k = int(np.floor(h))
            h = f(h - f(k))
            k %= 6  # h = 255 reads as 6.0: red again
            tab = (v, v * (f(1) - s), v * (f(1) - s * h), v * (f(1) - s * (f(1) - h)))
            bgr = tuple(tab[i] for i in sectors[k])
        out[idx] = [min(max(int(np.rint(f(c * f(255)))), 0), 255) for c in bgr]
    return out


@op("HueTransform")
def _hue(rng):
    lo = float(rng.uniform(-0.5, 0.5))
    value = float(rng.uniform(0, 0.5)) if rng.random() < 0.5 else \
        (lo, float(rng.uniform(lo, 0.5)))
    img, _, _ = _sample(rng, "uint8")
    img = np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img
    seed = int(rng.integers(2 ** 31))
    desc = f"HueTransform({value}) on image{img.shape}, seed {seed}"

    def fn():
        np.random.seed(seed)
        low, high = (-value, value) if isinstance(value, float) else value
        want = img
        if (low, high) != (0.0, 0.0):
            hsv = _cv_bgr2hsv(img)
            alpha = np.random.uniform(low, high)
            # upstream adds np.uint8(alpha * 255) to the uint8 hue: wraps around the circle
            hsv[..., 0] = (hsv[..., 0].astype(np.int64) + int(alpha * 255)) % 256
            want = _cv_hsv2bgr(hsv)
        np.random.seed(seed)
        # (one level: OpenCV's AVX2-dispatched HSV2BGR rounds 88 of the 16.7 million HSV
        # values the other way from its float32 formula, which the transform computes; case
        # 100825 drew one)
        return _compare(desc, T.HueTransform(value).apply(img), want,
                        int_tol=1 if cv2 is not None else 0)
    return Check(desc, fn)


@op("ToGray")
def _to_gray(rng):
    """F.to_gray as cv2.cvtColor(BGR2GRAY) (the call itself where cv2 is importable): integer
    images in OpenCV 4's 15-bit fixed point, floats with the float weights."""
    dt = pick(rng, ["uint8", "uint16", "float32"])
    img = _sample(rng, "float32")[0]
    img = np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img
    if dt != "float32":
        img = rng.integers(0, 256 if dt == "uint8" else 65536, size=img.shape).astype(dt)
    desc = f"to_gray(image{img.shape} {dt})"

    def fn():
        if cv2 is not None:
            want = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[:, :, None]
            return _compare(desc, VF.to_gray(img), want)
        want = np.zeros(img.shape[:2] + (1,), img.dtype)
        for idx in np.ndindex(img.shape[:2]):
            b, g, r = img[idx]
            if dt == "float32":
                want[idx] = (np.float32(0.114) * b + np.float32(0.587) * g
                             + np.float32(0.299) * r)
            else:
                want[idx] = (int(b) * 3735 + int(g) * 19235 + int(r) * 9798 + 16384) >> 15
        return _compare(desc, VF.to_gray(img), want)
    return Check(desc, fn)


# ----- noise: GaussianNoise and Lighting replayed from a seed -----

_EIGVEC = np.array([[-0.5836, -0.6948, 0.4203], [-0.5808, -0.0045, -0.8140],
                    [-0.5675, 0.7192, 0.4009]])  # ImageNet's, rows reversed for BGR
_EIGVAL = np.array([0.2175, 0.0188, 0.0045])


@op("Noise")
def _noise(rng):
    lighting = rng.random() < 0.5
    img = _sample(rng)[0]
    if lighting and img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    # (float32-exact: upstream keeps them as float32 arrays, which numpy's normal reads back)
    mean, std = float(pick(rng, [-0.03125, 0.0, 0.015625])), float(pick(rng, [0.0, 2 ** -7,
                                                                           0.125]))
    scale = float(pick(rng, [0.0, 0.05, 0.2]))
    seed = int(rng.integers(2 ** 31))
    desc = (f"{'Lighting(' + str(scale) if lighting else f'GaussianNoise({mean:.3f}, {std}'}) "
            f"on image{img.shape} {img.dtype}, seed {seed}")

    def fn():
        np.random.seed(seed)
        if lighting:
            # upstream: alpha ~ N(0, 255 * scale), added along the PCA axes, clipped, cast
            want = img if scale == 0 else (
                img.astype(np.float32) + _EIGVEC @ (np.random.normal(scale=scale * 255, size=3)
                                                    * _EIGVAL)).clip(0, 255).astype(img.dtype)
            t = T.Lighting(scale)
        else:
            noise = np.random.normal(mean, std, img.shape) * 255
            want = np.clip(img + noise.astype(np.float32), 0, 255).astype(img.dtype)
            t = T.GaussianNoise(mean, std)
        np.random.seed(seed)
        return _compare(desc, t.apply(img), want)
    return Check(desc, fn)


# ----- the other random geometry: replayed from a seed -----

def _resize_to(img, co, m, th, tw, interp):
    h, w = img.shape[:2]
    if (th, tw) == (h, w):
        return img, co, m
    return (_resize_ref(img, th, tw, interp).astype(img.dtype),
            (co * np.array([tw / w, th / h])).astype(co.dtype),
            _resize_ref(m, th, tw, VF.INTER_NEAREST).astype(m.dtype))


@op("RandomGeometry")
def _random_geometry(rng):
    kind = pick(rng, ["RandomCrop", "ShortestEdgeResize", "RandomResize"])
    img, co, m = _sample(rng)
    interp = pick(rng, _INTERPS)
    seed = int(rng.integers(2 ** 31))
    if kind == "RandomCrop":
        out = (int(rng.integers(1, 10)), int(rng.integers(1, 10)))
        pad = int(rng.integers(0, 3))
        pval, mval = int(rng.integers(0, 9)), int(rng.integers(0, 4))
        args = (out, pad, pval, mval)

        def ref():
            # Pad first (upstream's inner Pad has no mask value: the mask's border is 0), then
            # a window drawn inside; still too small: padded at the bottom / right with
            # padding_value (an OpenCV Scalar: the first channel) and padding_maskvalue
            pi = _border(img, (pad,) * 4, pval)
            pm = np.pad(m, ((pad, pad), (pad, pad), (0, 0)), constant_values=0)
            h, w = pi.shape[:2]
            x = np.random.randint(0, max(0, w - out[1]) + 1)
            y = np.random.randint(0, max(0, h - out[0]) + 1)
            grow = ((0, max(0, out[0] - h)), (0, max(0, out[1] - w)), (0, 0))
            pi = _border(pi, (0, grow[0][1], 0, grow[1][1]), pval)
            pm = np.pad(pm, grow, constant_values=mval)
            return (pi[y:y + out[0], x:x + out[1]], (co + pad - np.array([x, y])).astype(co.dtype),
                    pm[y:y + out[0], x:x + out[1]])
        make = lambda: T.RandomCrop(*args, order=_ORDER)  # noqa: E731
    elif kind == "ShortestEdgeResize":
        style = pick(rng, ["range", "choice"])
        lo = int(rng.integers(1, 8))
        sizes = (lo, lo + int(rng.integers(0, 4))) if style == "range" else \
            tuple(int(v) for v in rng.integers(1, 10, size=3))
        max_size = int(rng.integers(2, 14))
        args = (sizes, max_size, style, interp)

        def ref():
            h, w = img.shape[:2]
            size = np.random.randint(sizes[0], sizes[1] + 1) if style == "range" else \
                np.random.choice(sizes)
            scale = size / min(h, w)
            th, tw = (size, scale * w) if h < w else (scale * h, size)
            if max(th, tw) > max_size:
                # upstream's order (one factor, then two products): at an exact .5 the
                # other order can round to the other side (seed 13001)
                shrink = max_size / max(th, tw)
                th, tw = th * shrink, tw * shrink
            return _resize_to(img, co, m, int(round(th)), int(round(tw)), interp)
        make = lambda: T.ShortestEdgeResize(*args, order=_ORDER)  # noqa: E731
    else:
        rng_lo = float(rng.uniform(0.3, 1.5))
        args = ((rng_lo, rng_lo + float(rng.uniform(0, 1))), interp)

        def ref():
            h, w = img.shape[:2]
            s = np.random.uniform(*args[0])
            return _resize_to(img, co, m, int(round(h * s)), int(round(w * s)), interp)
        make = lambda: T.RandomResize(*args, order=_ORDER)  # noqa: E731
    desc = f"{kind}{args} on image{img.shape} {img.dtype}, seed {seed}"

    def fn():
        np.random.seed(seed)
        try:
            want = ref()
        except (ValueError, RuntimeError) + ((cv2.error,) if cv2 else ()):  # an empty target size
            want = None
        np.random.seed(seed)
        try:
            got = make().apply((img, co, m))
        except ValueError:
            if want is None:
                return "error"
            raise
        if want is None:
            raise Mismatch(f"{desc}: resized to an empty image")
        return _compare(desc, got, want, int_tol=_resize_tol(interp))
    return Check(desc, fn)


# ----- F.resize and F.pad alone against cv2 (where importable): any dtype, channels, sizes -----

def _cv2_image(rng, dt, h, w, c):
    lo, hi = {"uint8": (0, 256), "uint16": (0, 65536), "int16": (-32768, 32768)}.get(dt, (0, 256))
    if dt.startswith("float"):
        return rng.uniform(-10 if rng.random() < 0.2 else 0, 255, size=(h, w, c)).astype(dt)
    return rng.integers(lo, hi, size=(h, w, c)).astype(dt)


def _resize_cv2(rng):
    """F.resize against cv2.resize: uint8 to the level (cubic: IPP's near-halves, at most a
    level on 0.5% of the pixels), float32 within 2e-4 on 0..255 (IPP's sums differ in the last
    bits), float64 within 1e-6 relative, 16-bit within a level (OpenCV's SIMD float32 order)."""
    dt = pick(rng, ["uint8", "uint8", "uint8", "float32", "float32", "float64", "uint16", "int16"])
    interp = pick(rng, _INTERPS)
    h, w = int(rng.integers(1, 41)), int(rng.integers(1, 41))
    r = rng.random()
    if r < 0.25:  # integer shrink factors: OpenCV's fast area path (and linear's 2 x 2 halving)
        f = int(pick(rng, [2, 2, 3, 4]))
        th, tw = max(1, h // f), max(1, w // f)
        h, w = th * f, tw * f
    else:
        th, tw = int(rng.integers(1, 49)), int(rng.integers(1, 49))
    c = int(pick(rng, [1, 1, 2, 3, 3, 4, 5]))
    img = _cv2_image(rng, dt, h, w, c)
    desc = f"resize(image{img.shape} {dt}, ({th}, {tw}), interpolation={interp})"

    def fn():
        try:
            want = cv2.resize(img, (tw, th), interpolation=interp).reshape(th, tw, c)
        except cv2.error:  # true area shrinking of more than 4 channels: cv2 refuses, ours runs
            VF.resize(img, (th, tw), interp)
            return "error"
        got = VF.resize(img, (th, tw), interp)
        if got.dtype != want.dtype or got.shape != want.shape:
            raise Mismatch(f"{desc}: {got.dtype} {got.shape}, cv2 {want.dtype} {want.shape}")
        if dt.startswith("float"):
            tol = (0.0, 2e-4) if dt == "float32" else (1e-6, 1e-9)
            close(got, want, tol, desc)
            return "ok"
        diff = np.abs(got.astype(np.int64) - want)
        allowed = 1 if (dt != "uint8" or interp == VF.INTER_CUBIC) else 0
        if diff.max() > allowed or (dt == "uint8" and (diff > 0).sum() > max(1, 0.005 * diff.size)):
            at = np.unravel_index(int(diff.argmax()), diff.shape)
            raise Mismatch(f"{desc}: {(diff > 0).sum()} of {diff.size} values differ, up to "
                           f"{diff.max()} (at {at}: ours {got[at]}, cv2 {want[at]})")
        return "ok"
    return Check(desc, fn)


def _pad_cv2(rng):
    """F.pad against cv2.copyMakeBorder (BORDER_CONSTANT) as upstream calls it: Scalar
    values, float values casting to float32, more than 4 channels, refusals alike."""
    dt = pick(rng, ["uint8", "uint8", "float32", "uint16", "int16"])
    c = int(pick(rng, [1, 2, 3, 4, 5]))
    img = _cv2_image(rng, dt, int(rng.integers(1, 6)), int(rng.integers(1, 6)), c)
    r = rng.random()
    size = int(rng.integers(0, 3)) if r < 0.3 else \
        tuple(int(v) for v in rng.integers(0, 3, size=2 if r < 0.6 else 4))
    sizes = ((size,) * 4 if isinstance(size, int) else
             (0, size[0], 0, size[1]) if len(size) == 2 else size)
    k = int(rng.integers(1, 5))
    value = pick(rng, [0, int(rng.integers(-5, 300)), float(rng.uniform(-3, 300)),
                       [int(v) for v in rng.integers(-5, 300, size=k)],
                       [round(float(v), 1) for v in rng.uniform(-3, 300, size=k)],
                       [7] * 4])
    desc = f"pad(image{img.shape} {dt}, {size}, {value})"

    def fn():
        src = img.astype(np.float32) if np.array(value).dtype == float else img
        try:
            want = cv2.copyMakeBorder(src, *sizes, cv2.BORDER_CONSTANT, value=value)
        except cv2.error:
            want = None
        try:
            got = VF.pad(img, size, value)
        except ValueError:
            if want is None:
                return "error"
            raise
        if want is None:
            raise Mismatch(f"{desc}: accepted what cv2.copyMakeBorder refuses")
        return _compare(desc, got, want.reshape(got.shape[0], got.shape[1], -1))
    return Check(desc, fn)


if cv2 is not None:
    op("ResizeCV2")(_resize_cv2)
    op("PadCV2")(_pad_cv2)
