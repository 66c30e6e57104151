"""Tests for megengine/module/module.py: discovery, names, state_dict, modes, hooks, repr."""
import warnings
from collections import OrderedDict

import numpy as np
import pytest

import megengine as mge
import megengine.module as M
from megengine import Parameter, Tensor
from megengine.autodiff import GradManager
from megengine.module.module import LoadStateDictError


class Scale(M.Module):
    """A layer built from Tensor operators only (no functional), with a buffer."""

    def __init__(self, n):
        super().__init__()
        self.w = Parameter(np.arange(1, n + 1, dtype=np.float32))
        self.count = Tensor(np.zeros((), np.int32))

    def forward(self, x):
        return x * self.w


class Tree(M.Module):
    def __init__(self):
        super().__init__()
        self.z_last = Scale(2)
        self.blocks = [Scale(3), (Scale(1), {"b": Scale(2), "a": Scale(2)})]
        self.heads = {"y": Scale(4), "x": Scale(4)}
        self.bias = Parameter(np.zeros(3, np.float32))
        self.not_state = [1, "two", {"three": 3}]


EXPECTED_PARAMS = [
    "bias", "blocks.0.w", "blocks.1.0.w", "blocks.1.1.a.w", "blocks.1.1.b.w",
    "heads.x.w", "heads.y.w", "z_last.w",
]


def test_named_parameters_finds_lists_tuples_dicts_sorted():
    net = Tree()
    assert [k for k, _ in net.named_parameters()] == EXPECTED_PARAMS
    # parameters() is the same objects in the same order
    assert [id(p) for p in net.parameters()] == [id(p) for _, p in net.named_parameters()]
    assert net.heads["x"].w is dict(net.named_parameters())["heads.x.w"]


def test_named_parameters_prefix_and_non_recursive():
    net = Tree()
    assert [k for k, _ in net.named_parameters(prefix="net")] == ["net." + k for k in EXPECTED_PARAMS]
    assert [k for k, _ in net.named_parameters(recursive=False)] == ["bias"]
    assert list(net.blocks[0].parameters(recursive=False))[0] is net.blocks[0].w


def test_requires_grad_argument_is_accepted_and_ignored():
    net = Tree()
    with pytest.warns(DeprecationWarning, match="requires_grad"):
        params = list(net.parameters(requires_grad=True))
    assert len(params) == len(EXPECTED_PARAMS)


def test_buffers_are_non_parameter_tensors():
    net = Tree()
    names = [k for k, _ in net.named_buffers()]
    assert names == [
        "blocks.0.count", "blocks.1.0.count", "blocks.1.1.a.count", "blocks.1.1.b.count",
        "heads.x.count", "heads.y.count", "z_last.count",
    ]
    assert all(not isinstance(b, Parameter) for b in net.buffers())
    assert list(net.buffers(recursive=False)) == []
    assert len(list(net.tensors())) == len(EXPECTED_PARAMS) + len(names)


def test_shared_parameter_is_reported_once_under_its_first_name():
    net = Tree()
    net.alias = net.blocks[0].w
    net.again = net.heads["x"]
    names = [k for k, _ in net.named_parameters()]
    assert names.count("alias") == 1 and "blocks.0.w" not in names  # "alias" sorts first
    assert not any(k.startswith("heads.x") for k in names)  # seen first as "again"
    assert len(names) == len(EXPECTED_PARAMS)


def test_children_and_modules():
    net = Tree()
    assert [k for k, _ in net.named_children()] == [
        "blocks.0", "blocks.1.0", "blocks.1.1.a", "blocks.1.1.b", "heads.x", "heads.y", "z_last"]
    assert len(list(net.children())) == 7
    mods = list(net.named_modules())
    assert mods[0] == ("", net)
    assert [k for k, _ in mods[1:]] == [k for k, _ in net.named_children()]
    nested = M.Sequential(M.Sequential(Scale(1)))
    assert [k for k, _ in nested.named_modules(prefix="top")] == ["top", "top.0", "top.0.0"]
    assert list(nested.modules())[2] is nested[0][0]


def test_dict_with_non_str_key_holding_a_module_is_rejected():
    net = Scale(1)
    net.table = {1: Scale(1)}
    with pytest.raises(TypeError, match="str keys"):
        list(net.parameters())


def test_state_dict_is_numpy_copies_in_order():
    net = Tree()
    sd = net.state_dict()
    assert isinstance(sd, OrderedDict)
    # a module's own tensors first, then each submodule's (sorted), as upstream
    assert list(sd)[:3] == ["bias", "blocks.0.count", "blocks.0.w"]
    assert set(sd) == set(EXPECTED_PARAMS) | {k for k, _ in net.named_buffers()}
    assert all(type(v) is np.ndarray for v in sd.values())
    sd["blocks.0.w"][...] = 100  # a copy: the module is not changed
    assert net.blocks[0].w.numpy().tolist() == [1, 2, 3]
    assert all(isinstance(v, Tensor) for v in net.state_dict(keep_var=True).values())


def test_load_state_dict_round_trip_writes_in_place():
    src, dst = Tree(), Tree()
    for i, p in enumerate(src.parameters()):
        p._reset(np.random.randn(*p.shape).astype(np.float32) + i)
    pointers = {k: p._data.ctypes.data for k, p in dst.named_parameters()}
    view = dst.heads["x"].w._data  # someone else (e.g. torch) sharing the storage
    dst.load_state_dict(src.state_dict())
    for (k, a), (_, b) in zip(src.named_parameters(), dst.named_parameters()):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
        assert b._data.ctypes.data == pointers[k]
    np.testing.assert_array_equal(view, src.heads["x"].w.numpy())


def test_load_state_dict_accepts_tensors_and_casts_dtype():
    net = Scale(3)
    net.load_state_dict({"w": mge.tensor([4.0, 5.0, 6.0]), "count": np.array(7, np.int64)})
    assert net.w.numpy().tolist() == [4, 5, 6] and net.w.dtype == np.float32
    net.load_state_dict({"w": np.array([1.5, 2.5, 3.5], np.float64), "count": Tensor(np.int32(2))})
    assert net.w.numpy().tolist() == [1.5, 2.5, 3.5] and net.w.dtype == np.float32
    assert net.count.item() == 2 and net.count.dtype == np.int32


def test_strict_errors_list_every_problem_and_change_nothing():
    net = Tree()
    before = {k: v.copy() for k, v in net.state_dict().items()}
    sd = net.state_dict()
    del sd["bias"], sd["heads.y.count"]
    sd["extra.weight"] = np.zeros(2, np.float32)
    sd["blocks.0.w"] = np.zeros(4, np.float32)
    sd["z_last.w"] = np.zeros((2, 1), np.float32)
    sd["heads.x.w"] = np.full(4, 9, np.float32)  # valid: must not be written either
    with pytest.raises(LoadStateDictError) as info:
        net.load_state_dict(sd)
    msg = str(info.value)
    for needle in ("'bias'", "'heads.y.count'", "'extra.weight'",
                   "blocks.0.w: expected shape (3,), got (4,)",
                   "z_last.w: expected shape (2,), got (2, 1)"):
        assert needle in msg
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_dtype_that_cannot_be_stored_is_an_error():
    net = Scale(2)
    with pytest.raises(ValueError, match="count: expected dtype int32, got float32"):
        net.load_state_dict({"w": np.ones(2, np.float32), "count": np.array(1.5, np.float32)})


def test_non_strict_loads_what_matches_and_warns():
    net = Scale(3)
    with pytest.warns(UserWarning) as record:
        net.load_state_dict({"w": np.ones(3, np.float32), "other": np.ones(1)}, strict=False)
    text = " ".join(str(r.message) for r in record)
    assert "'count'" in text and "'other'" in text
    assert net.w.numpy().tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="expected shape"):  # shapes are checked even then
        net.load_state_dict({"w": np.ones(4, np.float32)}, strict=False)


def test_load_state_dict_with_closure_skips_none():
    net = Scale(3)
    seen = []

    def closure(key, var):
        seen.append((key, var.shape))
        return var.numpy() * 2 if key == "w" else None

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net.load_state_dict(closure, strict=False)
    assert net.w.numpy().tolist() == [2, 4, 6]
    assert ("count", ()) in seen
    with pytest.raises(KeyError, match="count"):
        net.load_state_dict(closure)
    with pytest.raises(TypeError, match="dict"):
        net.load_state_dict([("w", np.ones(3))])


def test_train_eval_propagate_into_containers():
    net = Tree()
    net.eval()
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())
    net.blocks[1][1]["a"].train(False)
    assert not net.blocks[1][1]["a"].training and net.training
    net.train(False, recursive=False)
    assert not net.training and net.blocks[0].training


def test_apply_visits_every_module_once():
    net = Tree()
    visited = []
    net.apply(visited.append)
    assert visited[0] is net and len(visited) == 8 and len({id(m) for m in visited}) == 8


def test_zero_grad_and_gradients_through_a_module():
    net = Scale(3)
    gm = GradManager().attach(net.parameters())
    x = mge.tensor([1.0, 2.0, 3.0])
    with gm:
        gm.backward((net(x) * net(x)).sum())  # d/dw sum((w x)^2) = 2 w x^2
    np.testing.assert_allclose(net.w.grad.numpy(), 2 * np.array([1, 2, 3]) * np.array([1, 4, 9]))
    net.zero_grad()
    assert net.w.grad.numpy().tolist() == [0, 0, 0]


def test_forward_hooks_modify_and_remove():
    net = Scale(2)
    calls = []
    pre = net.register_forward_pre_hook(lambda m, inputs: (calls.append("pre"), inputs[0] + 1)[1])
    post = net.register_forward_hook(lambda m, inputs, out: (calls.append("post"), out * 10)[1])
    watch = net.register_forward_hook(lambda m, inputs, out: calls.append(("watch", out.numpy().tolist())))
    out = net(mge.tensor([1.0, 1.0]))
    assert out.numpy().tolist() == [20, 40]  # ((x + 1) * w) * 10
    assert calls == ["pre", "post", ("watch", [20, 40])]
    pre.remove()
    post.remove()
    watch.remove()
    assert net(mge.tensor([1.0, 1.0])).numpy().tolist() == [1, 2]
    with pytest.raises(TypeError, match="callable"):
        net.register_forward_hook("not a function")


def test_repr_is_nested_with_layer_info():
    net = M.Sequential(M.Linear(3, 4), M.Sequential(M.ReLU(), M.Dropout(0.5)))
    assert repr(net) == (
        "Sequential(\n"
        "  (0): Linear(in_features=3, out_features=4, bias=True)\n"
        "  (1): Sequential(\n"
        "    (0): ReLU()\n"
        "    (1): Dropout(drop_prob=0.5)\n"
        "  )\n"
        ")"
    )


def test_assigning_a_module_before_init_is_a_clear_error():
    class Bad(M.Module):
        def __init__(self):
            self.layer = Scale(1)
            super().__init__()

    with pytest.raises(AttributeError, match=r"call super\(\).__init__\(\) first"):
        Bad()


def test_module_name_must_be_a_non_empty_string():
    assert M.Linear(2, 2, name="fc").name == "fc"
    with pytest.raises(ValueError, match="non-empty"):
        M.Identity(name=" ")


def test_sequential_container():
    a, b, c = Scale(1), Scale(2), Scale(3)
    seq = M.Sequential(a, b, c)
    assert len(seq) == 3 and list(seq) == [a, b, c] and seq[1] is b and seq[-1] is c
    assert [k for k, _ in seq.named_parameters()] == ["0.w", "1.w", "2.w"]
    tail = seq[1:]
    assert isinstance(tail, M.Sequential) and list(tail) == [b, c]
    assert [k for k, _ in tail.named_children()] == ["1", "2"]
    d = Scale(1)
    seq[0] = d
    assert seq[0] is d and list(seq.parameters())[0] is d.w
    del seq[0]
    assert list(seq) == [b, c] and not hasattr(seq, "0")
    named = M.Sequential(OrderedDict([("fc", Scale(2)), ("act", M.Identity())]))
    assert [k for k, _ in named.named_children()] == ["act", "fc"]  # discovery sorts names
    assert named.fc is named[0]
    x = mge.tensor([1.0, 1.0])
    assert named(x).numpy().tolist() == [1, 2]
    with pytest.raises(TypeError, match="Module"):
        M.Sequential(Scale(1), lambda x: x)


def test_importing_megengine_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, megengine.module; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
