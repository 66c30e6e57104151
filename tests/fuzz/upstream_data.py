"""Data pipelines drawn at random and run on this checkout and on upstream MegEngine 1.13::

    python -m tests.fuzz.upstream_data [--seeds N] [--start S] [--upstream PYTHON] [--show S]

Each seed writes a program (``--show S`` prints it): steps, each seeding numpy's global
generator, the samples' and ``megengine.random`` first, then one of: a vision transform (any
of upstream's but TorchTransformCompose, with drawn arguments: sizes as an int or a pair,
OpenCV's five interpolations, pads, colour jitters, flips; a ``Compose`` of two to four of them,
one now and then a ``Compose`` itself, with ``shuffle_indices`` or ``batch_compose``) applied
to a drawn sample (a uint8 or float32 image of one or three channels, bare or with boxes,
coords, a mask, keypoints, polygons, categories or info, in a drawn ``order``) by ``apply`` or
``apply_batch``; a sampler (Sequential, Random,
Replacement with weights, Infinite, over ``indices`` or a share of ``world_size``, seeded) read
batch by batch; a ``DataLoader`` over an ArrayDataset, a ConcatDataset or a StreamDataset with
a sampler, a transform and the default collator (now and then with two workers,
``parallel_stream``, ``preload``), read for two batches. The random transforms draw from
numpy's global generator as upstream's do, so both sides must draw the same values in the
same order: outputs are compared exactly (float32 images within float32 rounding), with
OpenCV's own resize code on both sides (Intel IPP, which OpenCV's x86 wheels hand some linear
and cubic resizes to, is turned off for resizes on both sides).

Each program runs here and, with ``--upstream``, in upstream's interpreter
(tests/fuzz/both_engines.py by path); upstream is the oracle, and `rule` counts the documented
differences. Without ``--upstream`` the programs run here only (each must build). CI compares
this checkout with upstream's recorded results (tests/fuzz/upstream_data.json, ``--record
FILE``)."""
import sys

import numpy as np

from tests.fuzz import both_engines as be

PRELUDE = '''
import numpy as np
import megengine as mge
import megengine.data as D
import megengine.data.transform as T
import megengine.random as mr
from megengine.data.dataset import ArrayDataset, ConcatDataset, StreamDataset
import megengine.data.transform.vision.functional as VF

# OpenCV's own resize code on both sides: upstream's cv2.resize without Intel IPP (whose
# arithmetic is not published: this fork follows it within a level, tests/data/
# test_transform_cv2.py), and this fork's resize following it (as OpenCV on ARM). Only resize:
# IPP stays on for cv2.cvtColor, as OpenCV's x86 wheels have it, and this fork follows it.
if hasattr(VF, "_OPENCV_USES_IPP"):
    VF._OPENCV_USES_IPP = False
else:
    import cv2

    def _resize_without_ipp(*args, _resize=cv2.resize, **kwargs):
        cv2.ipp.setUseIPP(False)
        try:
            return _resize(*args, **kwargs)
        finally:
            cv2.ipp.setUseIPP(True)

    cv2.resize = _resize_without_ipp


def r(a):
    """An array as [dtype, shape, values to 6 significant digits]."""
    a = np.asarray(a)
    v = a.astype("float64").ravel()
    return [str(a.dtype), list(a.shape), [float("%.6g" % x) for x in v]]


def snap(x):
    if isinstance(x, (tuple, list)):
        return [snap(v) for v in x]
    if isinstance(x, mge.Tensor):  # (a preloading DataLoader's)
        return ["Tensor"] + r(x.numpy())
    if isinstance(x, (np.ndarray, np.generic, int, float)):
        return r(x)
    return repr(x)


DATA = np.random.RandomState(1234)  # (the samples; the transforms draw from np.random)


def sample(order, h, w, c, dtype, n=3):
    """One input of ``order`` drawn from DATA: an (h, w, c) image and what goes with it."""
    parts = []
    for key in order:
        if key == "image":
            img = DATA.randint(0, 256, (h, w, c)) if dtype == "uint8" else \\
                DATA.uniform(0, 255, (h, w, c))
            parts.append(img.astype(dtype))
        elif key == "boxes":
            xy = DATA.uniform(0, [w, h], (n, 2))
            wh = DATA.uniform(0.5, [w, h], (n, 2))
            parts.append(np.concatenate([xy, xy + wh], 1).astype("float32"))
        elif key == "coords":
            parts.append(DATA.uniform(0, [w, h], (n, 2)).astype("float32"))
        elif key == "mask":
            parts.append(DATA.randint(0, 5, (h, w, 1)).astype("uint8"))
        elif key == "keypoints":
            pts = DATA.uniform(0, [w, h], (n, 2, 2))
            parts.append(np.concatenate([pts, DATA.randint(0, 3, (n, 2, 1))], -1)
                         .astype("float32"))
        elif key == "polygons":
            parts.append([[DATA.uniform(0, [w, h], (4, 2)).astype("float32")]
                          for _ in range(n)])
        elif key.endswith("category"):
            parts.append(np.arange(n, dtype="int32") if key == "boxes_category" else 7)
        else:  # info
            parts.append([h, w, "img.jpg"])
    return tuple(parts)


class Stream(StreamDataset):
    def __init__(self, h, w, c, dtype):
        self.shape = (h, w, c, dtype)

    def __iter__(self):
        for i in range(1000):
            yield sample(("image",), *self.shape)[0], np.int32(i)
'''

TRANSFORMS = ("BrightnessTransform", "CenterCrop", "ColorJitter", "ContrastTransform",
              "GaussianNoise", "HueTransform", "Lighting", "Normalize", "Pad", "PseudoTransform",
              "RandomCrop", "RandomHorizontalFlip", "RandomResize", "RandomResizedCrop",
              "RandomVerticalFlip", "Resize", "SaturationTransform", "ShortestEdgeResize")
ORDERS = [("image",), ("image", "boxes"), ("image", "mask", "image_category"),
          ("image", "coords", "mask"), ("image", "keypoints"), ("image", "polygons"),
          ("image", "boxes", "boxes_category", "mask", "info")]


class Draw:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def pick(self, items):
        return items[int(self.rng.integers(len(items)))]

    def i(self, lo, hi):
        return int(self.rng.integers(lo, hi + 1))

    def f(self, lo, hi, digits=2):
        return round(float(self.rng.uniform(lo, hi)), digits)

    def size(self, lo=1, hi=9):
        return self.pick([str(self.i(lo, hi)), f"({self.i(lo, hi)}, {self.i(lo, hi)})"])

    def transform(self, c, last=False):
        """The source of one transform's construction (without its order argument), for
        images of ``c`` channels; ``last``: ToMode may be drawn (it moves the channels)."""
        i, f, pick = self.i, self.f, self.pick
        name = pick(TRANSFORMS + (("ToMode",) if last else ()))
        interp = f"interpolation={i(0, 4)}"
        if name == "Normalize":
            args = (f"mean={pick([f(0, 128), [f(0, 128)] * c])}, "
                    f"std={pick([f(0.5, 60), [f(0.5, 60)] * c])}")
        elif name == "Pad":
            size = pick([str(i(0, 3)), f"({i(0, 3)}, {i(0, 3)})",
                         str(tuple(i(0, 3) for _ in range(4)))])
            args = f"{size}, value={pick([i(0, 255), [i(0, 255)] * c])}, mask_value={i(0, 9)}"
        elif name == "Resize":
            args = f"{self.size()}, {interp}"
        elif name == "ShortestEdgeResize":
            args = (f"{pick([str(i(2, 8)), f'({i(2, 5)}, {i(5, 9)})'])}, {i(6, 14)}, "
                    f"sample_style={pick(['range', 'choice'])!r}, {interp}")
        elif name == "RandomResize":
            args = f"({f(0.3, 1.0)}, {f(1.0, 2.0)}), {interp}"
        elif name == "RandomResizedCrop":
            args = (f"{self.size(2, 8)}, scale_range=({f(0.05, 0.5)}, {f(0.5, 1.0)}), "
                    f"ratio_range=({f(0.5, 1.0)}, {f(1.0, 2.0)}), {interp}")
        elif name == "CenterCrop":
            args = self.size(1, 8)
        elif name == "RandomCrop":
            args = (f"{self.size(1, 8)}, padding_size={i(0, 3)}, "
                    f"padding_value={[i(0, 255)] * c}, padding_maskvalue={i(0, 9)}")
        elif name.endswith("Flip"):
            args = str(pick([0.0, 0.5, 1.0]))
        elif name in ("BrightnessTransform", "ContrastTransform", "SaturationTransform"):
            args = str(f(0, 1))
        elif name in ("HueTransform", "Lighting"):
            args = str(f(0, 0.5))
        elif name == "ColorJitter":
            args = ", ".join(str(f(0, 0.5)) for _ in range(4))
        elif name == "GaussianNoise":
            args = f"{f(-0.1, 0.1)}, {f(0, 0.2)}"
        else:  # PseudoTransform, ToMode
            args = ""
        return f"T.{name}({args})"

    def compose(self, c, order, last=True, nested=True):
        """A Compose of two to four transforms (now and then one of them a Compose itself,
        whose order the outer one sets); ``last``: its last part may be ToMode."""
        n = self.i(2, 4)
        parts = [self.compose(c, None, last=False, nested=False)
                 if nested and self.rng.random() < 0.15 else
                 self.transform(c, last=last and k == n - 1) for k in range(n)]
        extra = self.pick(["", ", batch_compose=True",
                           f", shuffle_indices=[{tuple(range(1, n))}]",
                           ", shuffle_indices=[(1, 2)]"])
        return f"T.Compose([{', '.join(parts)}]{extra}, order={order!r})"

    def image(self):
        return self.i(1, 9), self.i(1, 9), self.pick([1, 3]), self.pick(["uint8", "float32"])

    def transform_step(self):
        h, w, c, dt = self.image()
        order = self.pick(ORDERS)
        if self.rng.random() < 0.4:
            t = self.compose(c, order)
        else:
            t = self.transform(c, last=True)
            t = t[:-1] + (", " if not t.endswith("()") else "") + f"order={order!r})"
            if t.startswith("T.PseudoTransform"):
                t = "T.PseudoTransform()"
        one = f"sample({order!r}, {h}, {w}, {c}, {dt!r})"
        if order == ("image",) and self.rng.random() < 0.5:
            one += "[0]"  # (a bare image, not a tuple)
        if self.rng.random() < 0.3:
            return f"t = {t}\nout = snap(t.apply_batch([{one}, {one}]))"
        return f"t = {t}\nout = snap(t.apply({one}))"

    def sampler(self, ds="ds", n=None):
        n = n or 0
        cls = self.pick(["SequentialSampler", "RandomSampler", "ReplacementSampler"])
        args = [ds, f"batch_size={self.i(1, 6)}"]
        if self.rng.random() < 0.5:
            args.append(f"drop_last={self.pick([True, False])}")
        if cls != "SequentialSampler":  # (upstream's unseeded draw is not reproducible)
            args.append(f"seed={self.i(0, 99)}")
        if cls == "ReplacementSampler" and self.rng.random() < 0.5:
            args.append(f"num_samples={self.i(1, 2 * n + 2)}")
        if cls == "ReplacementSampler" and n and self.rng.random() < 0.3:
            args.append(f"weights={[self.i(1, 4) for _ in range(n)]}")
        if cls != "ReplacementSampler" and n and self.rng.random() < 0.3:
            args.append(f"indices={sorted(set(self.i(0, n - 1) for _ in range(self.i(1, n))))}")
        if self.rng.random() < 0.3:
            ws = self.i(2, 3)
            args.append(f"world_size={ws}, rank={self.i(0, ws - 1)}")
        s = f"D.{cls}({', '.join(args)})"
        return f"D.Infinite({s})" if self.rng.random() < 0.2 else s

    def sampler_step(self):
        n = self.i(1, 17)
        s = self.sampler("ArrayDataset(np.arange(%d))" % n, n)
        read = ("[next(it) for _ in range(5)]" if s.startswith("D.Infinite") else "list(it)")
        return (f"s = {s}\nit = iter(s)\nout = [len(s) if not isinstance(s, D.Infinite) "
                f"else None, {read}, {read}]")

    def loader_step(self):
        h, w, c, dt = self.image()
        n = self.i(1, 9)
        kind = self.pick(["array", "concat", "stream"])
        transform = self.pick(["None", self.transform(c, last=True), self.compose(c, None)])
        if transform.startswith("T.Compose"):
            transform = transform.replace(", order=None)", ", order=('image', "
                                          "'image_category'))")
        elif transform != "None" and not transform.startswith("T.PseudoTransform"):
            transform = transform[:-1] + ("" if transform.endswith("()") else ", ") + \
                "order=('image', 'image_category'))"

        def images(count):
            one = f"sample(('image',), {h}, {w}, {c}, {dt!r})[0]"
            return f"np.stack([{one} for _ in range({count})])"

        # (workers now and then: seeded from megengine.random's seed, as upstream's)
        workers = self.pick(["", "", "", ", num_workers=2"])
        workers += self.pick(["", "", "", ", preload=True"])
        if kind == "stream":
            ds = f"Stream({h}, {w}, {c}, {dt!r})"
            sampler = f"D.StreamSampler(batch_size={self.i(1, 4)})"
            if "num_workers" in workers:
                workers += self.pick(["", ", parallel_stream=True"])
        else:
            ds = f"ArrayDataset({images(n)}, np.arange({n}, dtype='int32'))"
            if kind == "concat":
                ds = (f"ConcatDataset([{ds}, ArrayDataset({images(n + 1)}, "
                      f"np.arange({n + 1}, dtype='int32') * 10)])")
                n = 2 * n + 1
            sampler = self.sampler("ds", n)
        return (f"ds = {ds}\ndl = D.DataLoader(ds, {sampler}, transform={transform}{workers})\n"
                "it = iter(dl)\nout = [snap(next(it)), snap(next(it))]")

    def steps(self):
        makers = [self.transform_step] * 3 + [self.sampler_step, self.loader_step]
        # (each step seeds the generators: a step both sides refuse may have drawn different
        # amounts before raising)
        return [f"np.random.seed({self.i(0, 9999)})\nDATA.seed({self.i(0, 9999)})\n"
                f"mr.seed({self.i(0, 9999)})\n" + self.pick(makers)()
                for _ in range(self.i(3, 8))]


def draw(seed):
    """The program of ``seed``: (build source, [step sources])."""
    d = Draw(seed)
    return "pass", d.steps()


def _crop_pads_only_the_image(source):
    """Whether upstream pads only the image in the step's crop: a RandomCrop with a
    ``padding_size`` in a Compose of a sample of more than an image (its padding Pad keeps the
    order the crop was built with, ("image",), where the Compose sets the crop's own)."""
    import ast
    import re

    order = re.search(r"order=(\(.*?\))\)", source)
    return ("T.Compose(" in source and re.search(r"padding_size=[1-9]", source) and order
            and any(k not in ("image", "image_category", "info")
                    for k in ast.literal_eval(order.group(1))))


def _numbers_apart(a, b, tol):
    """How many numbers of two results differ (beyond ``tol``), or None where the results
    differ otherwise (shapes, dtypes, lengths)."""
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return None
        counts = [_numbers_apart(x, y, tol) for x, y in zip(a, b)]
        return None if None in counts else sum(counts)
    if isinstance(a, float) and isinstance(b, float):
        return 0 if be.close(a, b, tol) else 1
    return 0 if a == b else None


def rule(sources, i, mine, theirs):
    """The documented differences (docs/compatibility.rst), counted."""
    m, t, source = mine[i], theirs[i], sources[i]
    if m[0] == t[0] == "raise" and m[1] == "StopIteration":  # (both_engines compares types)
        if t[1] == "RuntimeError" and "num_workers=" in source:
            # the end of the batches: upstream's worker iterator is a generator, so its
            # StopIteration comes out as Python's RuntimeError (PEP 479)
            return "count", "upstream's workers end in RuntimeError"
        if "world_size=" in source:
            # a rank's share is empty here (a dataset or indices shorter than the ranks, or than
            # a batch with drop_last); upstream pads each share to its count with repeated
            # indices, which asserts where the padding falls short, or makes a batch that
            # fails later (images of two sizes: seed 46578)
            return "count", "a rank's empty share: upstream's padding fails"
    if be.same(m, t, FUZZER.tol) or i == 0:
        return None
    if "indices=" in source and t[0] == "ok" and (
            "world_size=" in source or "\ns = " in source and m[0] == "ok"
            and be.close(m[1][1:], t[1][1:], FUZZER.tol)):
        # len() of a sampler given indices counts them, and ranks share them; upstream's
        # counts the dataset, and pads each rank's share to that count with repeated indices
        return "count", "a sampler given indices counts them"
    if m[0] == t[0] == "ok" and ("HueTransform(" in source or "ColorJitter(" in source):
        # HSV back to BGR: OpenCV's SIMD code rounds a few products within 1e-4 of a half the
        # other way (one level of a uint8 image; a pixel in some thousands)
        apart = _numbers_apart(m[1], t[1], FUZZER.tol)
        if apart is not None and apart <= 2:
            return "count", "a hue rounds a level apart"
    if m[0] == t[0] == "ok" and _crop_pads_only_the_image(source):
        return "count", "RandomCrop in a Compose pads every part"
    return None


def integers_as_digests(value):
    """``value`` with each array of an integer dtype (`r`'s [dtype, shape, values]) as
    [dtype, shape, digest of its values]: a record keeps float values whole (compared within
    the tolerance) and integer ones as digests (compared exactly)."""
    if not isinstance(value, list):
        return value
    if (len(value) == 3 and isinstance(value[0], str) and isinstance(value[2], list)
            and not value[0].startswith("float")):
        return value[:2] + [be.digest(value[2])]
    return [integers_as_digests(v) for v in value]


FUZZER = be.Fuzzer("python -m tests.fuzz.upstream_data", draw, PRELUDE, rule,
                   keep=lambda source: integers_as_digests, tol=(1e-5, 1e-4))


if __name__ == "__main__":
    sys.exit(FUZZER.main(sys.argv[1:], __doc__))
