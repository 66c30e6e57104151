"""Upstream's dump test cases (``trace.dump(input_data=...)``): the input data a caller gives, in
each of upstream's forms (``#rand(...)`` specs, ``@file`` lists, ``.npy``/image/pickle files,
arrays, dicts), run through the dumped program so the file stores inputs with their outputs."""
import re

import numpy as np

from ._program import _host
from .dump_format import DumpError

_RAND = re.compile(r"^#rand\(([^)]*)\)$")


def make_testcases(program, input_data, repeat=1, resize_input=False, input_transform=None):
    """[(inputs, outputs)] for ``input_data``, as upstream's ``trace.dump`` reads it: a list
    (or one item) of test cases, each a string ``"var0:spec0;var1:spec1"`` (the name may be
    left out for a one-input program), ``"@file"`` (one such string per line of ``file``), a
    numpy array (one-input programs), a list of arrays (one per input, in order) or a dict
    {input name: array}. A spec is ``#rand(min, max[, shape...])`` (uniform in [min, max); a
    shape ending in ``...`` keeps the rest of the traced shape; no shape: the traced shape), a
    ``.npy`` file, a pickled array, or an image file (read as (1, C, H, W), as upstream).
    ``repeat`` repeats file and array data along axis 0; ``input_transform``: a Python
    expression of ``data`` (and ``np``), applied to each input."""
    if resize_input:
        raise DumpError("dump(resize_input=True): resizing images to the input shape is not "
                        "supported here; resize them before giving them as input_data")
    if isinstance(input_data, (str, np.ndarray, dict)):
        input_data = [input_data]
    items = []
    for item in input_data:
        if isinstance(item, str) and item.startswith("@"):
            with open(item[1:]) as f:
                items.extend(line.strip() for line in f if line.strip())
        else:
            items.append(item)
    shapes = {n: (shape, dtype) for n, shape, dtype in program.inputs}
    names = [n for n, _, _ in program.inputs]
    cases = []
    for k, item in enumerate(items):
        feeds = _case_feeds(item, names, shapes, repeat, k)
        for n in feeds:
            if input_transform is not None:
                feeds[n] = np.asarray(eval(input_transform, {"np": np}, {"data": feeds[n]}))
            feeds[n] = np.asarray(feeds[n]).astype(shapes[n][1])
        try:
            outs = program.run(feeds, strict_shape=False)
        except Exception as e:
            raise DumpError(f"dump(input_data=...): test case {k} "
                            f"({ {n: v.shape for n, v in feeds.items()} }) cannot run through "
                            f"the traced ops: {e}") from e
        cases.append((feeds, {n: _host(v._data) for n, v in outs.items()}))
    return cases


def _case_feeds(item, names, shapes, repeat, k):
    if isinstance(item, dict):
        feeds = {n: _repeat(np.asarray(_host(getattr(v, "_data", v))), repeat)
                 for n, v in item.items()}
    elif isinstance(item, np.ndarray) or (isinstance(item, (list, tuple)) and all(
            isinstance(v, np.ndarray) or hasattr(v, "_data") for v in item)):
        values = [item] if isinstance(item, np.ndarray) else list(item)
        if len(values) != len(names):
            raise DumpError(f"dump(input_data=...): test case {k} gives {len(values)} arrays "
                            f"for the inputs {names}")
        feeds = {n: _repeat(np.asarray(_host(getattr(v, "_data", v))), repeat)
                 for n, v in zip(names, values)}
    elif isinstance(item, str):
        feeds = {}
        parts = item.split(";")
        if len(parts) == 1 and parts[0].strip().startswith("#"):
            parts = [f"{n}:{parts[0].strip()}" for n in names]  # one random spec: every input's
        for part in parts:
            name, sep, spec = part.rpartition(":") if not part.startswith("#") else ("", "", part)
            if not sep and len(names) != 1:
                raise DumpError(f"dump(input_data=...): {part!r} names no input; the program "
                                f"has inputs {names}, give 'name:data' for each")
            name = name.strip() or names[0]
            if name not in shapes:
                raise DumpError(f"dump(input_data=...): no input named {name!r}; the program's "
                                f"inputs are {names}")
            feeds[name] = _spec_data(spec.strip(), shapes[name][0], repeat)
    else:
        raise DumpError(f"dump(input_data=...): test case {k} is a {type(item).__name__}; give "
                        "a string, an array, a list of arrays or a dict of arrays")
    missing = [n for n in names if n not in feeds]
    unknown = [n for n in feeds if n not in shapes]
    if missing or unknown:
        raise DumpError(f"dump(input_data=...): test case {k} lacks the inputs {missing} or "
                        f"names unknown ones {unknown}; the program's inputs are {names}")
    return feeds


def parse_rand(spec, shape):
    """(min, max, shape) of upstream's random data spec ``#rand(min, max[, d0, d1, ...])``
    for an input of ``shape`` (a shape ending in ``...`` keeps the rest of the input's), or None
    when ``spec`` is no such spec; ValueError when it is one, malformed."""
    m = _RAND.match(spec.replace(" ", ""))
    if not m:
        return None
    args = [a for a in m.group(1).split(",") if a]
    if len(args) < 2:
        raise ValueError(f"{spec!r} needs at least min and max")
    lo, hi = float(args[0]), float(args[1])
    dims = args[2:]
    if dims and dims[-1] == "...":
        head = [int(d) for d in dims[:-1]]
        shape = tuple(head) + tuple(shape[len(head):])
    elif dims:
        shape = tuple(int(d) for d in dims)
    return lo, hi, tuple(shape)


def _spec_data(spec, shape, repeat):
    try:
        rand = parse_rand(spec, shape)
    except ValueError as e:
        raise DumpError(f"dump(input_data=...): bad random spec: {e}; expected #rand(min, max) "
                        "or #rand(min, max, d0, d1, ...)") from None
    if rand is not None:
        lo, hi, shape = rand
        return np.random.uniform(lo, hi, size=shape)  # random data is not repeated (upstream)
    if spec.endswith(".npy"):
        data = np.load(spec, allow_pickle=False)
    else:
        try:
            from ..data.dataset.vision.folder import imread
            data = imread(spec).transpose(2, 0, 1)[None]  # (1, C, H, W), as upstream
        except Exception:  # not an image: upstream also reads a pickled array
            import pickle
            with open(spec, "rb") as f:
                data = pickle.load(f)
    return _repeat(np.asarray(data), repeat)


def _repeat(a, repeat):
    return np.repeat(a, repeat, axis=0) if repeat > 1 else a
