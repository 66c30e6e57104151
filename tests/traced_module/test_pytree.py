"""Tests of megengine/traced_module/pytree.py: flattening nested values (tracer, upstream forms)."""
import pickle

import numpy as np
import pytest

import megengine.module as M
from megengine import Parameter, Tensor
from megengine.traced_module.pytree import tree_flatten


def _is_tensor(x):
    return isinstance(x, Tensor)


def test_is_leaf_form_keeps_non_leaves_as_constants():
    x, y = Tensor([1.0]), Tensor([2.0])
    leaves, tree = tree_flatten(((x, 3), {"k": y, "s": "a"}), _is_tensor)
    assert leaves == [x, y]
    args, kwargs = tree.unflatten([y, x])
    assert args[0] is y and args[1] == 3 and kwargs["k"] is x and kwargs["s"] == "a"


def test_upstream_form_every_non_container_is_a_leaf():
    # upstream: tree_flatten(values, is_const_leaf=...) returns every leaf, constants included
    # (MegEngine/examples cambircon_train maps a function over them and unflattens)
    x = Tensor(np.ones((1, 2, 3, 4), "float32"))
    p = Parameter([1.0])
    value = ((x, 3, None), {"w": p, "mode": "nhwc"})
    leaves, tree = tree_flatten(value, is_const_leaf=lambda n: not isinstance(n, Tensor))
    # a dict's items in sorted key order, as upstream flattens them
    assert [type(v) for v in leaves] == [Tensor, int, type(None), str, Parameter]
    assert leaves[0] is x and leaves[4] is p
    mapped = [v * 2 if isinstance(v, Tensor) else v for v in leaves]
    args, kwargs = tree.unflatten(mapped)
    np.testing.assert_array_equal(args[0].numpy(), 2 * x.numpy())
    assert args[1:] == (3, None) and kwargs["mode"] == "nhwc"
    np.testing.assert_array_equal(kwargs["w"].numpy(), [2.0])
    assert tree.num_leaves == 5


def test_upstream_form_constants_decide_equality_tensors_do_not():
    a = tree_flatten((Tensor([1.0]), 2), is_const_leaf=lambda n: not isinstance(n, Tensor))[1]
    b = tree_flatten((Tensor([5.0]), 2), is_const_leaf=lambda n: not isinstance(n, Tensor))[1]
    c = tree_flatten((Tensor([1.0]), 7), is_const_leaf=lambda n: not isinstance(n, Tensor))[1]
    assert a == b and hash(a) == hash(b)
    assert a != c
    # the default const test is upstream's: everything but tensors and modules
    d = tree_flatten((Tensor([1.0]), M.Identity(), 2))[1]
    e = tree_flatten((Tensor([3.0]), M.Identity(), 2))[1]
    f = tree_flatten((Tensor([3.0]), M.Identity(), 3))[1]
    assert d == e and d != f
    arr = tree_flatten((np.arange(3),))[1]
    assert arr == tree_flatten((np.arange(3),))[1] and arr != tree_flatten((np.ones(3),))[1]


def test_upstream_form_unflatten_checks_the_leaf_count():
    _, tree = tree_flatten([1, 2], is_const_leaf=lambda n: True)
    with pytest.raises(ValueError, match="holds 2 leaves, got 1"):
        tree.unflatten([1])


def test_is_leaf_and_is_const_leaf_together_are_refused():
    with pytest.raises(TypeError, match="not both"):
        tree_flatten([1], _is_tensor, is_const_leaf=lambda n: True)


def test_upstream_names_of_the_tree_structure():
    # upstream's pytree: SUPPORTED_TYPE maps a container type to its NodeType (flatten ->
    # (children, aux data), unflatten), leaves have a LeafDef, a node's TreeDef shows aux_data
    # and children_defs: what tools (mgeconvert's pattern matcher) walk a structure with
    from megengine.traced_module.pytree import SUPPORTED_TYPE, LeafDef, NodeType

    value = ({"b": 1, "a": [2, 3]}, 4)
    leaves, tree = tree_flatten(value)
    # a dict's items in sorted key order, as upstream's (measured with upstream 1.13)
    assert leaves == [2, 3, 1, 4] and not isinstance(tree, LeafDef)
    assert isinstance(SUPPORTED_TYPE[dict], NodeType)
    assert SUPPORTED_TYPE[dict].flatten({"b": 1, "a": 2}) == ([2, 1], ["a", "b"])
    assert SUPPORTED_TYPE[list].unflatten([5, 6], None) == [5, 6]
    d, four = tree.children_defs
    assert tree.type is tuple and d.type is dict and d.aux_data == ["a", "b"]
    assert isinstance(four, LeafDef) and all(isinstance(c, LeafDef) for c in
                                             d.children_defs[0].children_defs)

    def walk(treedef, v):  # mgeconvert's flatten of a value along a TreeDef
        if isinstance(treedef, LeafDef):
            return [v]
        children, aux = SUPPORTED_TYPE[treedef.type].flatten(v)
        assert aux == treedef.aux_data
        return [x for c, ch in zip(treedef.children_defs, children) for x in walk(c, ch)]

    assert walk(tree, ({"b": "x", "a": ["y", "z"]}, "w")) == ["y", "z", "x", "w"]
    assert tree.unflatten([7, 8, 9, 10]) == ({"b": 9, "a": [7, 8]}, 10)


class _Pair:
    def __init__(self, a, b):
        self.a, self.b = a, b


def test_register_supported_type_from_the_package_names_a_containers_inputs():
    import megengine.traced_module as T
    from megengine.traced_module.pytree import SUPPORTED_TYPE

    class ScaledSum(M.Module):
        def forward(self, p):
            return p.a * 2 + p.b

    # upstream 1.13's parameter names (measured: type, flatten_fn, unflatten_fn)
    T.register_supported_type(type=_Pair, flatten_fn=lambda p: ([p.a, p.b], None),
                              unflatten_fn=lambda c, _: _Pair(*c))
    try:
        x, y = Tensor(np.ones(3, "float32")), Tensor(np.arange(3, dtype="float32"))
        tm = T.trace_module(ScaledSum(), _Pair(x, y))
        # upstream 1.13 measured: inputs self, p_0, p_1; tm(_Pair(y, x)) == [1, 3, 5]
        assert [n.name for n in tm.graph.inputs] == ["self", "p_0", "p_1"]
        np.testing.assert_equal(tm(_Pair(y, x)).numpy(), [1.0, 3.0, 5.0])
        with pytest.raises(TypeError, match="both flatten_fn and unflatten_fn"):
            T.register_supported_type(int, lambda v: ([], None))
        T.register_supported_type(int)  # a leaf type, as upstream registers one
        assert int not in SUPPORTED_TYPE
    finally:
        SUPPORTED_TYPE.pop(_Pair, None)


def test_treedefs_print_as_upstream():
    # upstream 1.13 measured: repr(expr.arg_def) and repr(expr.out_def) of these steps, and
    # the out_def of the inner graph (tm.s.argdef_outdef_map)
    import megengine.functional as F
    from megengine.traced_module import trace_module

    class Inner(M.Module):
        def forward(self, x, k=2.0):
            return {"a": [x, x + 1], "b": x * k}

    class Outer(M.Module):
        def __init__(self):
            super().__init__()
            self.s = Inner()

        def forward(self, x):
            r = self.s(x)
            y = F.concat([r["a"][0], r["b"]], axis=0)
            return y.astype("float16").reshape(-1)

    tm = trace_module(Outer(), Tensor(np.ones((1, 2), "float32")))
    got = [(repr(e.arg_def), repr(e.out_def)) for e in tm.graph._exprs[1:]]
    assert got == [
        ("((Module, Tensor, 2.0), {})", "{'a':[Tensor, Tensor], 'b':Tensor}"),
        ("(([Tensor, Tensor], 0, None), {})", "Tensor"),
        ("((Tensor, float16), {})", "Tensor"),
        ("((Tensor, -1), {})", "Tensor")]
    assert [repr(d) for d in tm.s.argdef_outdef_map.values()] == [
        "{'a':[Tensor, Tensor], 'b':Tensor}"]
    # a pickled TreeDef keeps the names of its leaves (a local class's too)
    back = pickle.loads(pickle.dumps(tm.graph._exprs[1].arg_def))
    assert repr(back) == "((Module, Tensor, 2.0), {})"
