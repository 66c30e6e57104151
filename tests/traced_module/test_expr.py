"""Tests of megengine/traced_module/expr.py: Expr.replace_inputs and getattrs of dotted attribute
names (the graph-surgery steps of upstream's guide ``graphsurgeon-example``)."""
import numpy as np
import pytest

import megengine.functional as F
import megengine.module as M
from megengine import Tensor
from megengine.traced_module import trace_module


class TwoLinear(M.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = M.Linear(3, 4), M.Linear(4, 2)

    def forward(self, x):
        return self.b(self.a(x))


def test_replace_inputs_lets_one_expr_read_a_new_node():
    net = TwoLinear()
    x = Tensor(np.random.randn(2, 3).astype(np.float32))
    tm = trace_module(net, x)
    graph = tm.graph
    call_b = graph.get_node_by_name("TwoLinear_b").as_unique().users[0]
    a_out = call_b.inputs[1]
    with graph.insert_exprs():
        doubled = a_out * 2
    call_b.replace_inputs({a_out: doubled})
    assert call_b.inputs[1] is doubled and call_b in doubled.users
    assert call_b not in a_out.users
    expect = net.b(net.a(x) * 2).numpy()
    np.testing.assert_allclose(tm(x).numpy(), expect, rtol=1e-6)


def test_replace_inputs_refuses_wrong_nodes():
    net = TwoLinear()
    x = Tensor(np.random.randn(2, 3).astype(np.float32))
    graph = trace_module(net, x).graph
    call_a, call_b = [graph.get_node_by_name(f"TwoLinear_{n}").as_unique().users[0]
                      for n in ("a", "b")]
    with pytest.raises(ValueError, match="no input"):
        call_a.replace_inputs({call_b.outputs[0]: graph.inputs[1]})
    with pytest.raises(ValueError, match="made after"):  # b's output comes after a
        call_a.replace_inputs({graph.inputs[1]: call_b.outputs[0]})
    with pytest.raises(TypeError, match="of its kind"):
        call_a.replace_inputs({graph.inputs[1]: graph.inputs[0]})


class Seq(M.Module):
    def __init__(self):
        super().__init__()
        self.body = M.Sequential(M.Linear(3, 3), M.ReLU())

    def forward(self, x):
        return self.body(x)


def test_a_dotted_name_that_is_an_attribute_itself_is_read_as_one():
    # the guide's fuse_bn: setattr(owner, conv_module._name, new) with _name "body.0", then a
    # getattr of that name inside insert_exprs
    net = Seq()
    x = Tensor(np.random.randn(2, 3).astype(np.float32))
    tm = trace_module(net, x)
    graph = tm.graph
    replacement = M.Linear(3, 3)
    setattr(tm, "body.0", replacement)
    self_node = graph.inputs[0]
    with graph.insert_exprs():
        out = getattr(self_node, "body.0")(graph.inputs[1])
    graph.replace_node({graph.outputs[0]: out})
    graph.compile()
    np.testing.assert_allclose(tm(x).numpy(), replacement(x).numpy(), rtol=1e-6)
    assert out.expr.inputs[0].expr.name == "body.0"


class Scaled(M.Module):
    def forward(self, x, scale=1.0):
        return x * scale


class Calls(M.Module):
    def __init__(self):
        super().__init__()
        self.b = Scaled()
        self.act = M.LeakyReLU(0.1)

    def forward(self, x):
        y = F.leaky_relu(x, 0.2)
        return y.sum(axis=0, keepdims=True) + self.b(self.act(y), scale=3.0)


def _calls():
    x = Tensor(np.arange(6, dtype=np.float32).reshape(3, 2) - 3)
    return trace_module(Calls(), x), x


def test_named_args_and_set_arg_of_functions_and_methods_as_upstream():
    # upstream's Expr.named_args / set_arg: the arguments by the called function's parameter
    # names, defaults filled in (a method's object is ``self``)
    tm, x = _calls()
    graph = tm.graph
    relu = graph.get_function_by_type(F.leaky_relu).as_unique()
    total = graph.get_method_by_type("sum").as_unique()
    assert relu.named_args == {"inp": graph.inputs[1], "negative_slope": 0.2}
    assert total.named_args == {"self": relu.outputs[0], "axis": 0, "keepdims": True}
    call = next(e for e in graph.exprs(False) if str(e).endswith("b(act_out, 3.0, )"))
    assert call.named_args["scale"] == 3.0 and call.named_args["x"] is call.inputs[1]
    relu.set_arg("negative_slope", 0.5)
    total.set_arg("axis", 1)
    y = F.leaky_relu(x, 0.5)
    want = y.sum(axis=1, keepdims=True) + F.leaky_relu(y, 0.1) * 3.0
    np.testing.assert_allclose(tm(x).numpy(), want.numpy(), rtol=1e-6)
    assert "nn.leaky_relu(x, 0.5, )" in str(graph)
    with pytest.raises(KeyError, match="no argument 'slope'.*negative_slope"):
        relu.set_arg("slope", 0.5)
    assert relu.named_args["negative_slope"] == 0.5  # (refused: nothing changed)
    with pytest.raises(TypeError, match="GetAttr expr calls no function"):
        call.inputs[0].expr.named_args


class Methods(M.Module):
    def forward(self, x):
        return (x * 2.0).reshape(6) @ F.ones((6, 2)) + x.transpose(1, 0).flatten()[:2]


def test_tensor_methods_name_their_parameters_as_upstreams():
    # upstream 1.13 (measured): x * 2 is __mul__(self, value), a @ b __matmul__(self, other),
    # reshape(self, *args), transpose(self, *args); named_args and set_arg go by these names
    # (earlier versions of this fork said other, *shape and *axes)
    x = Tensor(np.arange(6, dtype=np.float32).reshape(3, 2))
    tm = trace_module(Methods(), x)
    graph = tm.graph
    by_method = {e.method: e for e in graph.exprs(False) if hasattr(e, "method")}
    assert sorted(by_method["__mul__"].named_args) == ["self", "value"]
    assert sorted(by_method["__matmul__"].named_args) == ["other", "self"]
    assert sorted(by_method["reshape"].named_args) == ["args", "self"]
    assert sorted(by_method["transpose"].named_args) == ["args", "self"]
    by_method["__mul__"].set_arg("value", 3.0)
    want = (x.numpy() * 3.0).reshape(6) @ np.ones((6, 2)) + x.numpy().T.flatten()[:2]
    np.testing.assert_allclose(tm(x).numpy(), want, rtol=1e-6)


def test_disable_remove_keeps_an_expr_compile_would_drop():
    tm, x = _calls()
    graph = tm.graph
    relu = graph.get_function_by_type(F.leaky_relu).as_unique()
    total = graph.get_method_by_type("sum").as_unique()
    with graph.insert_exprs():
        mean = relu.outputs[0].mean(axis=0, keepdims=True)
    graph.replace_node({total.outputs[0]: mean})
    total.disable_remove()
    graph.compile()
    assert total in list(graph.exprs(False))  # (nothing reads it; kept)
    y = F.leaky_relu(x, 0.2)
    want = y.mean(axis=0, keepdims=True) + F.leaky_relu(y, 0.1) * 3.0
    np.testing.assert_allclose(tm(x).numpy(), want.numpy(), rtol=1e-6)
    total.enable_remove()
    graph.compile()
    assert total not in list(graph.exprs(False)) and relu in list(graph.exprs(False))
