"""Tests of megengine/traced_module/traced_module.py: a TracedModule runs, trains and saves as the module it came from."""
import copy
import io
import pickle

import numpy as np
import pytest

import megengine as mge
import megengine.functional as F
import megengine.module as M
from megengine import Tensor
from megengine.autodiff import GradManager
from megengine.traced_module import TracedModule, trace_module


class SmallCNN(M.Module):
    def __init__(self):
        super().__init__()
        self.conv = M.Conv2d(1, 4, 3, padding=1)
        self.bn = M.BatchNorm2d(4)
        self.fc = M.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
        return self.fc(F.flatten(x, 1))


def _x(n=2):
    return Tensor(np.random.randn(n, 1, 8, 8).astype(np.float32))


def test_cnn_matches_torch_and_the_original():
    torch = pytest.importorskip("torch")
    m = SmallCNN()
    m.eval()
    tm = trace_module(m, _x())
    x = _x(3)  # another batch size than the traced one
    t_conv = torch.nn.Conv2d(1, 4, 3, padding=1)
    t_fc = torch.nn.Linear(64, 5)
    with torch.no_grad():
        t_conv.weight.copy_(torch.tensor(m.conv.weight.numpy()))
        t_conv.bias.copy_(torch.tensor(m.conv.bias.numpy().reshape(-1)))
        t_fc.weight.copy_(torch.tensor(m.fc.weight.numpy()))
        t_fc.bias.copy_(torch.tensor(m.fc.bias.numpy()))
        h = t_conv(torch.tensor(x.numpy())) / np.sqrt(1 + 1e-5)  # bn at init, eval mode
        ref = t_fc(torch.nn.functional.max_pool2d(torch.relu(h), 2).flatten(1)).numpy()
    np.testing.assert_allclose(tm(x).numpy(), ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(tm(x).numpy(), m(x).numpy(), rtol=1e-6, atol=1e-6)


def test_gradients_equal_the_original():
    m = SmallCNN()
    tm = trace_module(m, _x())
    x = _x()
    grads = []
    for model in (m, tm):
        gm = GradManager().attach(model.parameters())
        with gm:
            loss = (model(x) ** 2).mean()
            gm.backward(loss)
        grads.append({n: p.grad.numpy().copy() for n, p in model.named_parameters()})
        for p in model.parameters():
            p.grad = None
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 6
    for k in grads[0]:
        np.testing.assert_allclose(grads[1][k], grads[0][k], rtol=1e-5, atol=1e-7)


def test_module_api_carries_over():
    m = SmallCNN()
    tm = trace_module(m, _x())
    assert isinstance(tm, TracedModule) and isinstance(tm, M.Module)
    assert [k for k, _ in tm.named_parameters()] == [k for k, _ in m.named_parameters()]
    for (_, a), (_, b) in zip(tm.named_parameters(), m.named_parameters()):
        assert a is b  # the same Parameters: optimizers and state dicts carry over
    assert list(tm.state_dict()) == list(m.state_dict())
    tm.eval()
    assert not tm.bn.training and not tm.training
    x = _x()
    m.eval()
    np.testing.assert_allclose(tm(x).numpy(), m(x).numpy(), rtol=1e-6)
    tm.train()
    assert tm.bn.training


class WithUnused(M.Module):
    def __init__(self):
        super().__init__()
        self.used = mge.Parameter(np.ones(2, dtype=np.float32))
        self.unused = mge.Parameter(np.ones(2, dtype=np.float32))

    def forward(self, x):
        return x * self.used


def test_tensors_forward_never_reads_are_left_out():
    tm = trace_module(WithUnused(), Tensor(np.ones(2, dtype=np.float32)))
    assert "used" in tm.__dict__ and "unused" not in tm.__dict__  # as upstream


@pytest.mark.parametrize("how", ["pickle", "mge.save", "deepcopy"])
def test_round_trips(how):
    m = SmallCNN()
    m.eval()
    tm = trace_module(m, _x())
    if how == "pickle":
        back = pickle.loads(pickle.dumps(tm))
    elif how == "deepcopy":
        back = copy.deepcopy(tm)
    else:
        f = io.BytesIO()
        mge.save(tm, f)
        f.seek(0)
        back = mge.load(f)
    assert type(back) is TracedModule
    assert str(back.graph) == str(tm.graph)
    x = _x()
    np.testing.assert_allclose(back(x).numpy(), m(x).numpy(), rtol=1e-6)
    # the copy's graph points at the copy's own modules, not the original's
    assert back.graph.inputs[0].owner is back
    conv_node = back.graph.get_module_by_type(M.Conv2d).as_unique()
    assert conv_node.owner is back.conv and back.conv is not m.conv


class Outer(M.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x - 1) + 1


def test_traced_module_inside_another_module_and_retraced():
    m = SmallCNN()
    m.eval()
    tm = trace_module(m, _x())
    outer = Outer(tm)
    x = _x()
    expect = m(x - 1) + 1
    np.testing.assert_allclose(outer(x).numpy(), expect.numpy(), rtol=1e-6)
    traced = trace_module(outer, x)
    assert isinstance(traced.inner, TracedModule)
    assert traced.inner.argspec is None and traced.inner._is_top is False
    assert traced.argspec is not None and traced._is_top
    np.testing.assert_allclose(traced(x).numpy(), expect.numpy(), rtol=1e-6)
    again = trace_module(tm, x)  # a TracedModule traced again
    np.testing.assert_allclose(again(x).numpy(), m(x).numpy(), rtol=1e-6)


class Twice(M.Module):
    def __init__(self):
        super().__init__()
        self.shared = M.Linear(3, 3)
        self.alias = self.shared

    def forward(self, x):
        return self.alias(self.shared(x))


def test_shared_submodule_stays_shared():
    tm = trace_module(Twice(), Tensor(np.ones((1, 3), dtype=np.float32)))
    assert tm.alias is tm.shared
    back = pickle.loads(pickle.dumps(tm))
    assert back.alias is back.shared


def test_pickle_of_a_module_class_defined_in_a_function():
    class Local(M.Module):  # pickle cannot find this class again by name
        def __init__(self):
            super().__init__()
            self.a = M.Elemwise("ADD")
            self.b = self.a

        def forward(self, x, y):
            return self.b(self.a(x, y), y)

    x, y = Tensor(1.0), Tensor(2.0)
    back = pickle.loads(pickle.dumps(trace_module(Local(), x, y)))
    assert back.a is back.b
    assert back.graph.inputs[0].module_type is TracedModule  # what it stands for now
    np.testing.assert_allclose(back(x, y).numpy(), 5.0)


class WithContainers(M.Module):
    def __init__(self):
        super().__init__()
        self.layers = [M.Linear(2, 2), M.Linear(2, 2)]
        self.heads = {"a": M.Linear(2, 1), "b": M.Linear(2, 1)}

    def forward(self, x):
        for layer in self.layers:
            x = F.relu(layer(x))
        return self.heads["a"](x) - self.heads["b"](x)


def test_lists_and_dicts_of_modules_become_containers():
    m = WithContainers()
    x = Tensor(np.random.randn(3, 2).astype(np.float32))
    tm = trace_module(m, x)
    assert isinstance(tm.layers, TracedModule) and len(tm.layers) == 2
    assert tm.layers[1] is m.layers[1] and tm.layers.__dict__["0"] is m.layers[0]
    assert list(tm.heads.keys()) == ["a", "b"] and tm.heads["b"] is m.heads["b"]
    assert list(tm.state_dict()) == list(m.state_dict())  # the same keys as the lists had
    np.testing.assert_allclose(tm(x).numpy(), m(x).numpy(), rtol=1e-6)
    back = pickle.loads(pickle.dumps(tm))
    np.testing.assert_allclose(back(x).numpy(), m(x).numpy(), rtol=1e-6)
    with pytest.raises(IndexError, match="out of range"):
        tm.layers[2]


def test_a_list_attribute_named_modules_traces_and_runs():
    # upstream's test_trace_module: ``self.modules = [...]`` hides Module.modules(); tracing
    # such a module called the container's TracedModule where it meant the method (TypeError)
    class Net(M.Module):
        def __init__(self):
            super().__init__()
            self.modules = [M.Elemwise("ADD"), M.Elemwise("RELU")]

        def forward(self, a, b):
            return self.modules[1](self.modules[0](a, b))

    a, b = Tensor([1.0, -5.0]), Tensor([2.0, 1.0])
    tm = trace_module(Net(), a, b)
    np.testing.assert_array_equal(tm(a, b).numpy(), [3.0, 0.0])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(tm))(a, b).numpy(), [3.0, 0.0])


class _Stack(M.Module):
    def __init__(self):
        super().__init__()
        self.a = M.Linear(4, 4)
        self.b = M.Linear(4, 2)

    def forward(self, x):
        h = F.relu(self.a(x))
        return self.b(h)


def test_watch_points_keep_values_of_the_latest_call():
    # upstream's guide (traced_module/api-example, set_watch_points)
    net = _Stack()
    x = Tensor(np.random.rand(3, 4).astype("float32"))
    tm = trace_module(net, x)
    relu = tm.graph.get_function_by_type(F.relu).as_unique()
    h_in, h_out = relu.inputs[0], relu.outputs[0]
    assert tm.watch_points == []
    tm.set_watch_points([h_in, h_out])
    assert tm.watch_points == [h_in, h_out]  # (upstream 1.13's attribute, a list)
    out = tm(x)
    want_in = net.a(x).numpy()
    np.testing.assert_allclose(tm.watch_node_value[h_in].numpy(), want_in, rtol=1e-6)
    np.testing.assert_allclose(tm.watch_node_value[h_out].numpy(), np.maximum(want_in, 0),
                               rtol=1e-6)
    np.testing.assert_allclose(out.numpy(), net(x).numpy(), rtol=1e-6)
    x2 = Tensor(np.random.rand(5, 4).astype("float32"))
    tm(x2)
    assert tm.watch_node_value[h_in].shape == (5, 4)  # overwritten by the new call
    tm.clear_watch_points()
    tm(x)
    assert tm.watch_node_value == {} and tm.watch_points == []


def test_end_points_stop_the_call_early():
    net = _Stack()
    x = Tensor(np.random.rand(3, 4).astype("float32"))
    tm = trace_module(net, x)
    relu = tm.graph.get_function_by_type(F.relu).as_unique()
    tm.set_end_points([relu.inputs[0], relu.outputs[0]])
    assert tm.end_points == [relu.inputs[0], relu.outputs[0]]
    before, after = tm(x)
    np.testing.assert_allclose(before.numpy(), net.a(x).numpy(), rtol=1e-6)
    np.testing.assert_allclose(after.numpy(), np.maximum(net.a(x).numpy(), 0), rtol=1e-6)
    tm.clear_end_points()
    assert tm.end_points == []
    np.testing.assert_allclose(tm(x).numpy(), net(x).numpy(), rtol=1e-6)
    inner = trace_module(M.Sequential(_Stack()), x)
    sub_node = inner.graph.exprs().call_function(F.relu).as_unique().outputs[0]
    with pytest.raises(ValueError, match="top graph"):
        inner.set_end_points([sub_node])
    for set_points in (tm.set_end_points, tm.set_watch_points):  # ('int' is not iterable)
        with pytest.raises(TypeError, match="expected nodes of the graph .*, got int 3"):
            set_points(3)


class ConcatNet(M.Module):  # the guide's find_cat_inputs
    def __init__(self):
        super().__init__()
        self.conv = M.Conv2d(3, 4, 1, bias=False)
        self.bn = M.BatchNorm2d(4)
        self.conv_bn = M.Sequential(M.Conv2d(4, 4, 1, bias=False), M.BatchNorm2d(4))

    def forward(self, x):
        x0 = self.bn(self.conv(x))
        return F.concat((x0, self.conv_bn(x0)), 1)


def test_flatten_names_inlined_results_after_the_call_and_keeps_their_origin():
    x = Tensor(np.random.rand(1, 3, 4, 4).astype(np.float32))
    flat = trace_module(ConcatNet(), x).flatten()
    cat = flat.graph.get_function_by_type(F.concat).as_unique()
    # upstream's documented output: (bn_out, conv_bn_out) and ['bn_out', 'conv_bn.1_out']
    assert [n.name for n in cat.inputs] == ["bn_out", "conv_bn_out"]
    assert [n._orig_name for n in cat.inputs] == ["bn_out", "conv_bn.1_out"]
    cat.inputs[1].name = "renamed"
    assert cat.inputs[1]._orig_name == "conv_bn.1_out"


class _FcRelu(M.Module):
    def __init__(self):
        super().__init__()
        self.fc = M.Linear(3, 3)

    def forward(self, x):
        return F.relu(self.fc(x))


class _CallsTwice(M.Module):
    def __init__(self):
        super().__init__()
        self.a = _FcRelu()
        self.seq = M.Sequential(_FcRelu(), M.ReLU())

    def forward(self, x):
        return self.seq(self.a(x)) + self.a(x)


def test_flatten_names_inlined_nodes_after_their_call_as_upstream():
    # an inlined graph's nodes are prefixed by the call's module node (``seq`` + ``_0``),
    # the top graph's keep their names (``a_1_out``): upstream 1.13 measured
    # (``[n.name for n in tm.flatten().graph.nodes()]``)
    x = Tensor(np.random.rand(2, 3).astype("float32"))
    tm = trace_module(_CallsTwice(), x)
    flat = tm.flatten()
    assert [n.name for n in flat.graph.nodes()] == [
        "self", "x", "a_fc", "a_fc_out", "a_out", "seq__1", "seq__0_fc", "seq__0_fc_out",
        "seq__0_out", "seq_out", "a_fc_out_1", "a_1_out", "add_out"]
    np.testing.assert_allclose(flat(x).numpy(), tm(x).numpy(), rtol=1e-6)


class _Relu1(M.Module):
    def forward(self, x):
        return F.relu(x) + 1


class _Twice(M.Module):
    def __init__(self):
        super().__init__()
        self.l0, self.l1 = _Relu1(), _Relu1()

    def forward(self, x):
        return self.l1(self.l0(x))


class _Holds(M.Module):
    def __init__(self):
        super().__init__()
        self.l0 = _Twice()

    def forward(self, x):
        return self.l0(x) * 2


class _TwoLevels(M.Module):
    def __init__(self):
        super().__init__()
        self.c, self.b = _Holds(), _Twice()

    def forward(self, x):
        return self.b(self.c(x))


def test_flatten_names_results_two_levels_down_as_upstream():
    # upstream inlines a level at a time, in copies of each graph's namespace: the result
    # ``c.l0`` returns comes from ``l1``'s call, named ``l0_out`` in ``_Holds``'s graph but
    # ``l0_out_1`` in ``_Twice``'s, where ``l0_out`` is taken; so ``c_l0_out_1`` (upstream
    # 1.13 measured: ``[n.name for n in tm.flatten().graph.nodes(False)]``)
    x = Tensor(np.random.RandomState(0).randn(2, 3).astype("float32"))
    tm = trace_module(_TwoLevels(), x)
    flat = tm.flatten()
    assert [n.name for n in flat.graph.nodes(False)] == [
        "self", "x", "c_l0_l0_relu_out", "c_l0_l0_out", "c_l0_l1_relu_out", "c_l0_out_1",
        "c_out", "b_l0_relu_out", "b_l0_out", "b_l1_relu_out", "b_out"]
    want = np.maximum(np.maximum((np.maximum(x.numpy(), 0) + 1), 0) + 1, 0) * 2
    want = np.maximum(np.maximum(want, 0) + 1, 0) + 1  # by hand
    np.testing.assert_allclose(flat(x).numpy(), want, rtol=1e-6)


def test_function_attributes_are_left_out_so_a_lambda_does_not_stop_saving():
    # upstream 1.13 measured: its TracedModule keeps none of a module's plain attributes; here
    # functions are left out (the graph holds what forward called), so a lambda attribute no
    # longer makes mge.save fail ("Can't pickle local object")
    import io

    class Net(M.Module):
        def __init__(self):
            super().__init__()
            self.fc = M.Linear(3, 2)
            self.scale = 3
            self.act = lambda x: x * 2

        def forward(self, x):
            return self.act(self.fc(x)) * self.scale

    net = Net()
    x = mge.tensor(np.random.RandomState(0).rand(4, 3).astype("float32"))
    tm = trace_module(net, x)
    assert not hasattr(tm, "act") and isinstance(tm.fc, M.Linear)
    buf = io.BytesIO()
    mge.save(tm, buf)
    buf.seek(0)
    loaded = mge.load(buf)
    w, b = net.fc.weight.numpy(), net.fc.bias.numpy()
    want = (x.numpy() @ w.T + b) * 2 * 3  # by hand
    np.testing.assert_allclose(loaded(x).numpy(), want, rtol=1e-6)


class _Unread(M.Module):
    def __init__(self):
        super().__init__()
        self.used = M.Linear(3, 3)
        self.unused = M.Linear(3, 3)
        self.unused_seq = M.Sequential(M.ReLU(), M.Linear(3, 3))
        self.w = mge.Parameter(np.ones(3, dtype="float32"))
        self.w_unused = mge.Parameter(np.ones(3, dtype="float32"))

    def forward(self, x):
        return self.used(x) + self.w


def test_submodules_forward_never_reads_are_dropped_as_upstream():
    # upstream 1.13 measured: list(tm.state_dict()) and repr(tm)
    tm = trace_module(_Unread(), Tensor(np.ones((2, 3), "float32")))
    assert list(tm.state_dict()) == ["w", "used.bias", "used.weight"]
    assert repr(tm) == ("TracedModule(\n"
                        "  (used): Linear(in_features=3, out_features=3, bias=True)\n)")
    assert not hasattr(tm, "unused") and not hasattr(tm, "unused_seq")


def test_tracing_something_that_is_no_module_is_upstreams_assertion_too():
    # upstream asserts a Module (measured); the error is a TypeError and an AssertionError
    for error in (TypeError, AssertionError):
        with pytest.raises(error, match="trace_module expects a megengine Module, got int"):
            trace_module(3, mge.tensor([1.0]))


def test_a_search_without_one_match_and_a_call_of_another_structure_assert_as_upstream():
    # upstream 1.13 asserts both (measured); the errors are also ValueError / TypeError
    x = mge.tensor(np.ones((1, 3), np.float32))
    tm = trace_module(_FcRelu(), x)
    for error in (ValueError, AssertionError):
        with pytest.raises(error, match="as_unique: 0 elements match"):
            tm.graph.get_node_by_name("nope").as_unique()
    for error in (TypeError, AssertionError):
        with pytest.raises(error, match="traced with the argument structure"):
            tm(x, x)
