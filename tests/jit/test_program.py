"""Tests for megengine/jit/_program.py's one walker of encoded structures (`_leaves`): what
`_refs_in` (the slots a step or an output refers to) and `_dim_leaves` (the slots whose sizes
the record holds as expressions) find in the forms each producer makes: `_freeze` (op state),
the recorder's `_encode` (event arguments, outputs) and `shape_tensors.objects` (shape
tensors' object arrays)."""
import collections

import numpy as np

import megengine as mge
import megengine.functional as F
from megengine.core import dispatch
from megengine.core._trace_option import SymDim
from megengine.jit import trace
from megengine.jit._program import _dim_leaves, _DimExpr, _freeze, _Ref, _refs_in
from megengine.jit.shape_tensors import objects

_Pair = collections.namedtuple("_Pair", "a b")


def test_freeze_forms_refer_to_traced_arrays_and_size_expressions():
    traced, other = np.zeros(3, "float32"), np.ones(2, "float32")
    n = SymDim(4, ("*", ("dim", 2, 0), 2), None, True)
    h = SymDim(5, ("dim", 7, 1), None, True)
    state = (traced, other, [n, 3], slice(h, None), {"k": (n, "x")}, np.float32(1.5))
    frozen = _freeze(state, lambda a: 9 if a is traced else None)
    # (in order: the traced array, n, h, n again; the untraced array is a value, no slot)
    assert list(_refs_in(frozen)) == [9, 2, 7, 2]
    assert list(_dim_leaves(frozen)) == [2, 7, 2]


def test_encoded_event_arguments_find_refs_outside_arrays_and_sizes_inside_them():
    # the recorder's own encoding (taken from the recording in progress): tensors become
    # references, a SymDim outside an array its value; an object array the user passes stays
    # as given, so a tensor inside it is no reference and a SymDim inside it a size
    got = {}

    def fn(x):
        rec = dispatch._trace_hook
        n = x.shape[0]
        arr = np.empty(3, object)
        arr[:] = [x, n, 3]
        enc = rec._encode((x, [arr, _Pair(x, n)], {"k": n}))
        got["enc"], got["x"] = enc, rec.source(x)
        return x * 2

    f = trace(fn, symbolic=True, capture_as_const=True)
    f(mge.tensor(np.ones((2, 3), "float32")))
    s = got["x"]
    assert list(_refs_in(got["enc"])) == [s, s]  # x itself and in the namedtuple
    assert list(_dim_leaves(got["enc"])) == [s]  # n inside the array (its value elsewhere)
    arr = got["enc"][1][0]
    assert arr.dtype == object and isinstance(arr[0], mge.Tensor)  # (stayed as given)


def test_shape_tensor_object_arrays_give_their_sizes():
    h, w = SymDim(5, ("dim", 1, 2), None, True), SymDim(6, ("dim", 3, 3), None, True)
    arr = objects([[h, 2], [w, h]])
    assert arr.dtype == object and arr.shape == (2, 2)
    assert list(_dim_leaves(arr)) == [1, 3, 1]
    assert list(_refs_in(arr)) == []  # (sizes of a shape tensor are no step's reference)
    assert list(_refs_in((_Ref(4), _DimExpr(("+", ("dim", 6, 0), 1))))) == [4, 6]


def test_programs_still_let_go_of_what_they_no_longer_use_and_size_what_they_built_from():
    # end to end: a record with a shape tensor, an op built from sizes and an output that is
    # a structure; checked calls equal eager and hand out SymDims only for x
    kinds = []

    def fn(x, y):
        kinds.append((type(x.shape[0]), type(y.shape[0])))
        z = F.zeros(mge.Tensor(x.shape)) + x
        return {"z": z, "pair": _Pair(y * 2, z.sum())}

    f = trace(fn, symbolic=True, capture_as_const=True)
    x, y = np.ones((2, 3), "float32"), np.arange(4, dtype="float32")
    for _ in range(3):
        out = f(mge.tensor(x), mge.tensor(y))
        np.testing.assert_allclose(out["z"].numpy(), x)
        np.testing.assert_allclose(out["pair"].a.numpy(), y * 2)
        assert float(out["pair"].b.numpy()) == 6.0
    assert kinds[1:] == [(SymDim, int)] * 2
