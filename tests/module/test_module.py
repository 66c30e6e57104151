"""Tests for megengine/module/module.py: discovery, names, state_dict, modes, hooks, repr."""
import logging
import warnings
from collections import OrderedDict

import numpy as np
import pytest

import megengine as mge
import megengine.module as M
from megengine import Parameter, Tensor
from megengine.autodiff import GradManager
from megengine.module.module import LoadStateDictError
from devices import address, host


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


def test_requires_grad_argument_is_accepted_ignored_and_logged_as_upstreams():
    net = Tree()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # upstream 1.13 logs it (measured); no Python warning
        with _ModuleLog() as log:
            params = list(net.parameters(requires_grad=True))
            named = list(net.named_parameters(requires_grad=False))
    assert len(params) == len(named) == len(EXPECTED_PARAMS)
    assert log.messages == ["Tensor currently has no requires_grad attribute so requires_grad "
                            "argument is ignored here"] * 2


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
    # upstream asserts (AssertionError) with this text; it is a TypeError too
    with pytest.raises(AssertionError, match="keys for Tensor and Module must be str, error key: 1"):
        net.table = {1: Scale(1)}
    with pytest.raises(TypeError, match="use str keys"):
        net.table = {"ok": [Scale(1)], True: {"a": mge.tensor([1.0])}}
    assert not hasattr(net, "table")
    # nor is anything else changed: the repr order list had "table" left in it
    assert "table" not in net._modules
    net.plain = {True: 1, False: 0, 3: "x"}  # non-str keys without tensors are fine
    vars(net)["sneaked"] = {2: Scale(1)}  # found at discovery time too
    with pytest.raises(AssertionError, match="error key: 2"):
        list(net.parameters())


def test_state_dict_is_numpy_copies_in_order():
    net = Tree()
    sd = net.state_dict()
    assert isinstance(sd, OrderedDict)
    # a module's own tensors first, then each submodule's (sorted), as upstream
    assert list(sd)[:3] == ["bias", "blocks.0.count", "blocks.0.w"]
    assert set(sd) == set(EXPECTED_PARAMS) | {k for k, _ in net.named_buffers()}
    assert all(type(v) is np.ndarray for v in sd.values())
    with pytest.raises(ValueError, match="read-only"):  # as upstream: not a way to edit
        sd["blocks.0.w"][...] = 100
    assert net.blocks[0].w.numpy().tolist() == [1, 2, 3]
    assert all(isinstance(v, Tensor) for v in net.state_dict(keep_var=True).values())


def test_state_dict_keep_var_entries_of_batch_norm_are_its_tensors():
    # a model EMA written over state_dict(keep_var=True) (YOLOX's form) reaches the norm layers
    # (upstream 1.13 hands out 1-d reshapes there, which such a write leaves apart: documented)
    from megengine.functional.inplace import _inplace_add_

    ema, model = M.BatchNorm2d(3), M.BatchNorm2d(3)
    model.weight._reset(model.weight * 0 + 3)
    model.running_mean._reset(model.running_mean + 2)
    ema_sd, model_sd = ema.state_dict(keep_var=True), model.state_dict(keep_var=True)
    assert ema_sd["weight"] is ema.weight and ema_sd["running_mean"] is ema.running_mean
    for k, v in ema_sd.items():
        _inplace_add_(v, model_sd[k], alpha=0.75, beta=0.25)
    np.testing.assert_array_equal(ema.weight.numpy().ravel(), [1.5] * 3)  # 0.75 * 1 + 0.25 * 3
    np.testing.assert_array_equal(ema.running_mean.numpy().ravel(), [0.5] * 3)
    assert ema.state_dict()["weight"].shape == (3,)  # without keep_var: 1-d, as upstream


def test_load_state_dict_round_trip_writes_in_place():
    src, dst = Tree(), Tree()
    for i, p in enumerate(src.parameters()):
        p._reset(np.random.randn(*p.shape).astype(np.float32) + i)
    pointers = {k: address(p) for k, p in dst.named_parameters()}
    # another holder of one parameter's array (a view, a detached alias): upstream's values
    # never change, so it keeps the old value and that parameter gets a new array
    # (PyTorchModule's parameters, which torch shares, are always written in place)
    held = dst.heads["x"].w._data
    old = host(held)
    dst.load_state_dict(src.state_dict())
    for (k, a), (_, b) in zip(src.named_parameters(), dst.named_parameters()):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
        assert (address(b) == pointers[k]) == (k != "heads.x.w")
    np.testing.assert_array_equal(host(held), old)


def test_load_state_dict_accepts_tensors_and_casts_dtype():
    net = Scale(3)
    net.load_state_dict({"w": mge.tensor([4.0, 5.0, 6.0]), "count": np.array(7, np.int64)})
    assert net.w.numpy().tolist() == [4, 5, 6] and net.w.dtype == np.float32
    net.load_state_dict({"w": np.array([1.5, 2.5, 3.5], np.float64), "count": Tensor(np.int32(2))})
    assert net.w.numpy().tolist() == [1.5, 2.5, 3.5] and net.w.dtype == np.float32
    assert net.count.item() == 2 and net.count.dtype == np.int32


def test_load_state_dict_refuses_a_complex_value_for_a_real_parameter():
    # torch's load_state_dict drops the imaginary part with a warning; upstream 1.13 measured:
    # a complex64 weight into M.Linear raises an unrelated RuntimeError ("layout should be
    # contiguous"). Earlier versions of this fork made the parameter complex64
    net = Scale(3)
    with pytest.raises(LoadStateDictError, match=r"w: expected dtype float32, got complex64"):
        net.load_state_dict({"w": np.array([1 + 2j, 3, 4], np.complex64),
                             "count": np.array(7, np.int64)})
    assert net.w.dtype == np.float32 and net.w.numpy().tolist() == [1, 2, 3]
    assert net.count.item() == 0


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


def test_a_value_of_another_dtype_brings_its_dtype_as_upstream():
    # upstream 1.13 (measured): load_state_dict makes each tensor its value, dtype included (a
    # float16 checkpoint makes the module float16; a float into an int buffer makes it float);
    # 64-bit values are stored as Tensor() stores them (float64 as float32)
    net = Scale(2)
    net.load_state_dict({"w": np.array([0.5, 2.0], np.float16), "count": np.array(1.5, np.float32)})
    assert net.w.dtype == np.float16 and net.count.dtype == np.float32
    np.testing.assert_array_equal(host(net.w), [0.5, 2.0])
    assert float(net.count) == 1.5
    net.load_state_dict({"w": np.array([1.0, 3.0]), "count": np.array(2, np.int64)})
    assert net.w.dtype == np.float32 and net.count.dtype == np.int32
    np.testing.assert_array_equal(host(net.w), [1.0, 3.0])


class _ModuleLog:
    """The records of megengine's logger of megengine/module/module.py (which, as upstream's,
    does not propagate to the root logger that pytest's caplog listens to)."""

    def __enter__(self):
        self.records = []
        self.handler = logging.Handler()
        self.handler.emit = self.records.append
        self.logger = logging.getLogger("megengine.module.module")
        self.logger.addHandler(self.handler)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)

    @property
    def messages(self):
        return [r.getMessage() for r in self.records]


def test_non_strict_loads_what_matches_and_logs():
    net = Scale(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # upstream logs these; no Python warning is raised
        with _ModuleLog() as log:
            net.load_state_dict({"w": np.ones(3, np.float32), "other": np.ones(1)},
                                strict=False)
    assert log.messages == ["Unused params in `strict=False` mode, unused={'other'}",
                            "Missing params in `strict=False` mode, missing={'count'}"]
    assert net.w.numpy().tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="expected shape"):  # shapes are checked even then
        net.load_state_dict({"w": np.ones(4, np.float32)}, strict=False)


@pytest.mark.parametrize("bad, error", [
    (np.array(["a", "b"]), TypeError),  # not numbers
    ([[1.0, 2.0], [3.0]], ValueError),  # a ragged list
])
def test_a_value_that_is_no_array_of_numbers_is_named_and_nothing_loads(bad, error):
    # the error (of the type it was) now names the key; the values before it stay unwritten
    net = Tree()
    before = {k: v.copy() for k, v in net.state_dict().items()}
    sd = {k: v + 1 for k, v in net.state_dict().items()}
    sd["z_last.w"] = bad
    with pytest.raises(error, match=r"load_state_dict: the value of 'z_last.w' cannot be "
                                    r"loaded: .*nothing was loaded"):
        net.load_state_dict(sd)
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


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
    with pytest.warns(DeprecationWarning):
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
    for bad in (" ", 3):  # upstream 1.13 asserts (measured): its type too
        with pytest.raises(ValueError, match="non-empty") as error:
            M.Identity(name=bad)
        assert isinstance(error.value, AssertionError)


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
    with pytest.raises(TypeError, match="Module or a callable"):
        M.Sequential(Scale(1), 3)


def test_sequential_calls_follow_every_change_of_its_layers():
    """A Sequential keeps its call order between calls; each way of changing the layers shows
    at the next call (expected values: the layers applied by hand, in order)."""
    a, b, c, d = Scale(3), Scale(3), Scale(3), Scale(3)
    for k, layer in enumerate((a, b, c, d)):
        layer.w._reset(np.array([k + 1, -2.0, 0.5 * k], np.float32))
    seq = M.Sequential(a, b, c)
    x = mge.tensor([1.0, 1.0, 1.0])

    def expect(*layers):
        y = x
        for layer in layers:
            y = layer(y)
        np.testing.assert_array_equal(seq(x).numpy(), y.numpy())

    expect(a, b, c)
    expect(a, b, c)
    seq[2] = d
    expect(a, b, d)
    setattr(seq, "1", c)
    expect(a, c, d)
    del seq[0]
    expect(c, d)
    seq.layer_keys.reverse()  # the key list edited in place
    expect(d, c)
    hook = seq.register_forward_hook(lambda m, inputs, out: out * 10)  # after calls
    seq[0].register_forward_pre_hook(lambda m, inputs: inputs[0] + 1)  # (d: x + 1 from now)
    np.testing.assert_array_equal(seq(x).numpy(), c((x + 1) * d.w).numpy() * 10)
    hook.remove()
    np.testing.assert_array_equal(seq(x).numpy(), c((x + 1) * d.w).numpy())
    state = seq.state_dict()
    assert sorted(state) == ["1.count", "1.w", "2.count", "2.w"]
    assert "_call_order" not in repr(seq)


def test_sequential_calls_plain_function_layers_as_upstream():
    # HarDNet_Megengine: Sequential(OrderedDict(conv=..., norm=..., relu=F.relu6))
    import megengine.functional as F

    seq = M.Sequential(OrderedDict([("fc", Scale(3)), ("act", F.relu6), ("neg", lambda x: -x)]))
    x = mge.tensor([1.0, -1.0, 4.0])
    np.testing.assert_array_equal(seq(x).numpy(), [-1.0, 0.0, -6.0])  # -relu6(x * [1, 2, 3])
    assert [k for k, _ in seq.named_children()] == ["fc"]
    assert sorted(seq.state_dict()) == ["fc.count", "fc.w"] and len(seq) == 3
    assert seq[1] is F.relu6


def test_importing_megengine_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, megengine.module; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ----- upstream 1.13's Module internals (test_module.py there): structure, repr, naming -----
class Holder(M.Module):
    """upstream's MyModule2 shape: modules inside lists, dicts and tuples."""

    class Inner(M.Module):
        def __init__(self):
            super().__init__()
            self.s = Scale(2)
            self.flags = {True: 1, False: 0}  # non-str keys are fine without tensors

        def forward(self, x):
            return self.s(x)

    def __init__(self):
        super().__init__()
        self.bn = Scale(4)
        self.a = [Scale(4), {"x": Scale(4), "y": [Scale(4), self.Inner()], "z": 0},
                  (self.Inner(),)]

    def forward(self, x):
        return x


def test_expand_structure_names_and_parents_as_upstream():
    m = Holder()
    assert list(m.named_modules(with_parent=True)) == [
        ("", m, None),
        ("a.0", m.a[0], m),
        ("a.1.x", m.a[1]["x"], m),
        ("a.1.y.0", m.a[1]["y"][0], m),
        ("a.1.y.1", m.a[1]["y"][1], m),
        ("a.1.y.1.s", m.a[1]["y"][1].s, m.a[1]["y"][1]),
        ("a.2.0", m.a[2][0], m),
        ("a.2.0.s", m.a[2][0].s, m.a[2][0]),
        ("bn", m.bn, m),
    ]
    assert [mod for mod, _ in m.modules(with_parent=True)] == list(m.modules())
    # nothing but Tensors and Modules is ever yielded
    assert list(m._flatten(with_key=True, predicate=lambda o: not isinstance(o, (Tensor, M.Module)))) == []


def test_access_structure_follows_dotted_keys():
    from megengine.module.module import _access_structure

    m = Holder()
    for key, leaf in list(m.named_modules())[1:] + list(m.named_parameters()):
        assert _access_structure(m, key) is leaf
        assert _access_structure(m, key, lambda parent, k, cur: cur) is leaf
    parent, k, cur = _access_structure(m, "a.1.y.0.w", lambda *a: a)
    assert parent is m.a[1]["y"][0] and k == "w" and cur is m.a[1]["y"][0].w
    parent, k, cur = _access_structure(m, "a.2.0", lambda *a: a)
    assert parent is m.a[2] and k == 0 and cur is m.a[2][0]

    def replace(parent, k, cur):  # what set_expand_structure-style helpers do with it
        parent[k] = Scale(7)

    _access_structure(m, "a.1.y.0", replace)
    assert m.a[1]["y"][0].w.shape == (7,)
    assert "a.1.y.0.w" in dict(m.named_parameters())
    with pytest.raises(KeyError, match="'q'"):
        _access_structure(m, "a.1.q")
    with pytest.raises(IndexError, match="step 9 is not in list"):
        _access_structure(m, "a.9")


def test_a_named_submodule_set_again_logs_upstreams_warning():
    class Holder(M.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

    tree = Tree()
    with _ModuleLog() as log:
        holder = Holder(tree.z_last)
    # upstream 1.13 measured (a module handed to a second parent, as a hand-written
    # quantization wrapper does): one warning through megengine's logger, naming the class as
    # its repr prints it ("<class '__main__.Holder'>"), and the first name kept
    assert log.messages == [
        f"try setting the submodule `z_last` to `{Holder!r}`'s new attribute `inner`, "
        "its name `z_last` will remain unchanged"]
    assert [r.levelname for r in log.records] == ["WARNING"]
    assert holder.inner._name == "z_last"
    assert not log.logger.propagate  # its own console handler writes upstream's "WRN" line


def test_a_tensor_set_as_a_second_attribute_logs_upstreams_warning():
    class Inner(M.Module):
        def __init__(self):
            super().__init__()
            self.w = Parameter(np.ones(2, np.float32))

    class Outer(M.Module):
        def __init__(self):
            super().__init__()
            self.inner = Inner()
            self.w2 = self.inner.w  # a weight shared with a second attribute
            self.t = Tensor([2.0])
            self.t2 = self.t
            self.t3 = self.t2  # warned about too, by its first name
            self.named = Tensor([1.0], name="kept")
            self.again = self.named  # a user's name is the name: nothing to warn about

    with _ModuleLog() as log:
        outer = Outer()
    # upstream 1.13 measured: "submodule" for Tensors too, the first attribute's name kept
    head, tail = "try setting the submodule", "will remain unchanged"
    assert log.messages == [
        f"{head} `w` to `{Outer!r}`'s new attribute `w2`, its name `w` {tail}",
        f"{head} `t` to `{Outer!r}`'s new attribute `t2`, its name `t` {tail}",
        f"{head} `t` to `{Outer!r}`'s new attribute `t3`, its name `t` {tail}"]
    assert [n for n, _ in outer.named_parameters()] == ["inner.w"]
    with _ModuleLog() as log:
        outer.inner.w.name = "renamed"  # a name given after the first attribute, then set again
        Inner.__setattr__(outer.inner, "w", outer.inner.w)
    assert log.messages == [
        f"{head} `w` to `{Inner!r}`'s new attribute `renamed`, its name `w` {tail}"]


def test_attribute_rules_before_init():
    class ListFirst(M.Module):
        def __init__(self):
            self.layers = [Scale(1)]
            super().__init__()

    with pytest.raises(AttributeError, match="cannot assign module before Module.__init__"):
        ListFirst()

    class TensorDictFirst(M.Module):
        def __init__(self):
            self.table = {"w": Parameter([1.0])}
            super().__init__()

    with pytest.raises(AttributeError, match="'table'"):
        TensorDictFirst()

    class SettingsFirst(M.Module):  # plain values (and plain tuples) may come first
        def __init__(self):
            self.kernel = (3, 3)
            self.w = Parameter([1.0])
            super().__init__()

        def forward(self, x):
            return x * self.w

    m = SettingsFirst()
    assert m.kernel == (3, 3) and [k for k, _ in m.named_parameters()] == ["w"]


def test_module_dict_keys_as_upstream():
    class Empty(M.Module):
        def forward(self):
            pass

    # the attributes pickles of upstream modules carry
    assert set(vars(Empty())) == {
        "_modules", "name", "training", "quantize_disabled", "_forward_pre_hooks",
        "_forward_hooks", "_name", "_short_name",
    }


def test_forward_less_module_fails_when_called():
    class NoForward(M.Module):
        pass

    with pytest.raises(NotImplementedError, match="NoForward has no forward"):
        NoForward()(mge.tensor([1.0]))


def test_submodules_are_named_where_first_assigned():
    m = Holder()
    assert m.bn._short_name == "bn" and m.bn._name == "bn"
    assert m.a[1]["y"][1]._name == "a.1.y.1" and m.a[1]["y"][1].s._name == "a.1.y.1.s"
    named = M.Sequential(M.Linear(2, 2), name="top")
    assert named[0]._name == "top.0"
    m.again = m.bn  # a second name does not rename it
    assert m.bn._short_name == "bn"


class Reprs(M.Module):
    def __init__(self):
        super().__init__()
        self.fc2 = M.Linear(4, 2)
        self.drop = M.Dropout(drop_prob=0.1)
        self.list1 = [M.Dropout(drop_prob=0.2), [M.Softmax(axis=1)]]
        self.tuple1 = (M.Dropout(drop_prob=0.3), (M.Softmax(axis=0), M.Identity()))
        self.dict1 = {"b": M.ReLU(), "a": M.Dropout(drop_prob=0.4)}
        self.fc1 = M.Linear(3, 4, bias=False)

    def forward(self, x):
        return x


def test_repr_lists_children_in_assignment_order():
    assert repr(Reprs()) == (
        "Reprs(\n"
        "  (fc2): Linear(in_features=4, out_features=2, bias=True)\n"
        "  (drop): Dropout(drop_prob=0.1)\n"
        "  (list1.0): Dropout(drop_prob=0.2)\n"
        "  (list1.1.0): Softmax(axis=1)\n"
        "  (tuple1.0): Dropout(drop_prob=0.3)\n"
        "  (tuple1.1.0): Softmax(axis=0)\n"
        "  (tuple1.1.1): Identity()\n"
        "  (dict1.a): Dropout(drop_prob=0.4)\n"
        "  (dict1.b): ReLU()\n"
        "  (fc1): Linear(in_features=3, out_features=4, bias=False)\n"
        ")"
    )


def test_repr_after_reassign_rereference_delete_and_reset():
    class Changing(M.Module):
        def __init__(self, flag):
            super().__init__()
            self.first = M.Linear(1, 2)
            self.second = M.Dropout(drop_prob=0.5)
            self.first = M.Linear(1, 3)      # reassigned: keeps its place
            self.third = self.second         # the same module printed under both names
            self.gone = M.ReLU()
            if flag:
                self.reset = None
                self.reset = M.Identity()
            else:
                self.reset = M.Identity()
                self.reset = None            # no longer a child

        def forward(self, x):
            return x

    m0, m1 = Changing(True), Changing(False)
    del m0.gone
    del m1.gone
    common = (
        "  (first): Linear(in_features=1, out_features=3, bias=True)\n"
        "  (second): Dropout(drop_prob=0.5)\n"
        "  (third): Dropout(drop_prob=0.5)\n"
    )
    assert repr(m0) == "Changing(\n" + common + "  (reset): Identity()\n)"
    assert repr(m1) == "Changing(\n" + common + ")"


def test_pickle_round_trip_keeps_structure_and_repr():
    import pickle

    m = Reprs()
    m2 = pickle.loads(pickle.dumps(m))
    assert repr(m2) == repr(m) and m2._modules == m._modules
    # a pickle of an older module (no naming fields, no _modules) still loads and prints
    state = dict(vars(m))
    for k in ("_modules", "_short_name", "quantize_disabled"):
        del state[k]
    old = Reprs.__new__(Reprs)
    old.__setstate__(state)
    assert repr(old).splitlines()[1:] == repr(m).splitlines()[1:]
    assert old._short_name is None and old.quantize_disabled is False


def test_disable_quantize_reaches_every_module():
    m = Holder()
    assert m.disable_quantize() is m
    assert all(sub.quantize_disabled for sub in m.modules())
    m.a[0].disable_quantize(False)
    assert not m.a[0].quantize_disabled and m.bn.quantize_disabled


def test_replace_param_by_position():
    class Two(M.Module):
        def __init__(self):
            super().__init__()
            self.b = Scale(2)
            self.a = Parameter(np.zeros(3, np.float32))
            self.c = Parameter(np.zeros(1, np.float32))

        def forward(self, x):
            return x

    m = Two()
    # numbering: a (0), b.w (1), c (2); b.count is a buffer, not numbered
    new_bw, new_c = Parameter([5.0, 6.0]), Parameter([9.0])
    with pytest.warns(DeprecationWarning, match="replace_param"):
        assert m.replace_param({1: new_bw, 2: new_c}, 0) == 3
    assert m.b.w is new_bw and m.c is new_c and m.a.shape == (3,)
    with pytest.raises(ValueError, match="shape"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.replace_param({10: Parameter([1.0])}, 10)
    kept = m.a  # a wrong shape further on: nothing is replaced
    # (upstream asserts the shape: the error is an AssertionError too)
    with pytest.raises(AssertionError, match="'c' \\(position 2\\)"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.replace_param({0: Parameter(np.ones(3, np.float32)), 2: Parameter([1.0, 2.0])}, 0)
    assert m.a is kept


@pytest.mark.parametrize("name, args", [("zero_grad", ()), ("replace_param", ({}, 0))])
def test_zero_grad_and_replace_param_warn_as_upstream(name, args):
    # upstream decorates both with the deprecated package's @deprecated(version="1.0"), whose
    # text for a method is "Call to deprecated method <name>. -- Deprecated since version
    # <version>."; one warning per call, at the caller's line
    net = Scale(2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        getattr(net, name)(*args)
    assert [(w.category, str(w.message), w.filename) for w in caught] == [
        (DeprecationWarning, f"Call to deprecated method {name}. -- Deprecated since version 1.0.",
         __file__)]


def test_load_state_dict_strict_forms_as_upstream():
    class MLP(M.Module):
        def __init__(self):
            super().__init__()
            self.dense0 = M.Linear(6, 5)
            self.dense1 = M.Linear(5, 2)

        def forward(self, x):
            return self.dense1(mge.functional.relu(self.dense0(x)))

    x = mge.tensor(np.random.RandomState(0).rand(2, 6).astype(np.float32))
    src, dst = MLP(), MLP()
    sd = src.state_dict()
    sd["extra"] = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dst.load_state_dict(sd, strict=False)
    np.testing.assert_allclose(dst(x).numpy(), src(x).numpy(), rtol=1e-6)
    with pytest.raises(KeyError):
        dst.load_state_dict(sd)  # an unexpected key
    del sd["extra"], sd["dense0.bias"]
    with pytest.raises(KeyError, match="dense0.bias"):
        dst.load_state_dict(sd)  # a missing key
    with pytest.raises(ValueError):
        dst.load_state_dict(["not", "a", "dict"])


def test_0x_train_override_without_recursive():
    # 0.x's Module.train(mode) had no ``recursive``; MegEngine/Models' GAN models override it
    # so (resetting their traced steps) and call super().train(mode=mode). eval() on such a
    # model, or on a model holding one, must reach every module and each override once+.
    calls = []

    class Old(M.Module):
        def __init__(self):
            super().__init__()
            self.fc = M.Linear(2, 2)

        def train(self, mode=True):
            calls.append(mode)
            super().train(mode=mode)

    class Outer(M.Module):
        def __init__(self):
            super().__init__()
            self.old = Old()
            self.bn = M.BatchNorm1d(2)

    old = Old()
    old.eval()
    assert calls == [False] and not old.training and not old.fc.training
    calls.clear()
    outer = Outer()
    outer.eval()
    assert not outer.training and not outer.bn.training
    assert not outer.old.training and not outer.old.fc.training and calls and not any(calls)
    outer.train()
    assert outer.old.fc.training and outer.bn.training and calls[-1] is True


def test_state_dict_goes_through_an_overridden_state_dict_hook_at_any_depth():
    # upstream's state_dict is built by `_state_dict(rst, prefix, keep_var)`, keyed by
    # (module class, name); MegEngine/invis overrides it to give torch's 1-D conv bias
    class TorchBiasConv(M.Conv2d):
        def _state_dict(self, rst=None, prefix="", keep_var=False):
            rst = M.Conv2d._state_dict(self, rst, prefix, keep_var)
            key = (type(self), prefix + "bias")
            rst[key] = rst[key].reshape(-1)
            return rst

    class Net(M.Module):
        def __init__(self):
            super().__init__()
            self.conv = TorchBiasConv(2, 3, 1)
            self.bn = M.BatchNorm2d(3)

    net = Net()
    sd = net.state_dict()
    assert list(sd) == ["bn.bias", "bn.running_mean", "bn.running_var", "bn.weight",
                        "conv.bias", "conv.weight"]
    assert sd["conv.bias"].shape == (3,) and sd["conv.weight"].shape == (3, 2, 1, 1)
    assert sd["bn.running_mean"].shape == (3,)  # norm layers' states stay 1-D as before
    raw = net._state_dict()
    assert raw[(TorchBiasConv, "conv.bias")].shape == (3,)
    assert raw[(M.BatchNorm2d, "bn.weight")].shape == (1, 3, 1, 1)


def test_children_replaced_while_walking_a_called_sequential():
    # basecls' RepVGGBlock.convert_to_deploy: `for name, child in m.named_children():
    # setattr(m, name, convert(child))` over an SE block's Sequential that has been called
    seq = M.Sequential(Scale(3), M.ReLU(), Scale(3))
    x = mge.tensor([1.0, -1.0, 4.0])
    before = seq(x).numpy()
    walked = []
    for name, child in seq.named_children():
        walked.append(name)
        setattr(seq, name, child)
    assert walked == ["0", "1", "2"]
    np.testing.assert_array_equal(seq(x).numpy(), before)
