"""Tests of megengine/utils/naming.py: the AutoNaming scope stack, as generated code uses it."""
import numpy as np
import pytest

import megengine.functional as F
import megengine.module as M
from megengine import Tensor, jit, tensor
from megengine.utils.naming import AutoNaming, auto_naming


@pytest.fixture(autouse=True)
def _fresh_scopes():
    AutoNaming.clear()
    yield
    AutoNaming.clear()


def test_scopes_nest_and_join_with_dots():
    AutoNaming.push_scope("root")
    AutoNaming.push_scope(None)  # upstream: a scope that adds no name
    AutoNaming.push_scope("layer1.0")
    assert AutoNaming.get_scope() == "root.layer1.0"
    assert AutoNaming.pop_scope() == "layer1.0"
    assert AutoNaming.get_scope() == "root"
    AutoNaming.pop_scope()
    AutoNaming.pop_scope()
    assert AutoNaming.get_scope() == ""


def test_the_instance_spelling_shares_the_class_state():
    auto_naming.push_scope("root")  # upstream's later form: a module-level instance
    assert AutoNaming.get_scope() == "root"
    AutoNaming.pop_scope()
    assert auto_naming.get_scope() == ""


def test_gen_name_and_recorded_var_names():
    x = Tensor([1.0], name="w")
    assert AutoNaming.gen_name(x) == "w"
    AutoNaming.push_scope("root")
    AutoNaming.push_scope("fc")
    assert AutoNaming.gen_name(x) == "root.fc.w"
    AutoNaming.record_var_name(id(x), "weight")
    assert AutoNaming.get_var_name(id(x)) == "weight"
    assert AutoNaming.get_var_name(id(x)) is None  # read once, as upstream's pop


def test_unbalanced_pop_and_bad_scope_say_what_is_wrong():
    with pytest.raises(RuntimeError, match="no scope is open"):
        AutoNaming.pop_scope()
    with pytest.raises(TypeError, match="a scope is a str"):
        AutoNaming.push_scope(3)


def test_torch2mge_generated_forward_traces_and_dumps(tmp_path):
    # the shape of MegEngine/torch2mge's generated code: module calls wrapped in scopes,
    # traced with capture_as_const and dumped with upstream's naming options
    root = M.Module()
    root.conv1 = M.Conv2d(in_channels=3, out_channels=4, kernel_size=(3, 3), stride=(1, 1),
                          padding=(1, 1), dilation=(1, 1), groups=1, bias=False)
    root.fc = M.Linear(in_features=4, out_features=2, bias=True)

    def body(x):
        AutoNaming.push_scope("root")
        conv1 = root.conv1(x)
        AutoNaming.pop_scope()
        AutoNaming.push_scope("root")
        flatten_1 = F.flatten(F.mean(conv1, axis=(2, 3)), 1)
        AutoNaming.pop_scope()
        AutoNaming.push_scope("root")
        fc = root.fc(flatten_1)
        AutoNaming.pop_scope()
        return fc

    data = tensor(np.random.RandomState(0).rand(1, 3, 5, 5).astype(np.float32))
    want = body(data).numpy()
    forward = jit.trace(body, capture_as_const=True)
    for _ in range(2):  # the record and a replay
        np.testing.assert_allclose(forward(data).numpy(), want, rtol=1e-6)
    assert AutoNaming.get_scope() == ""
    forward.dump(str(tmp_path / "model.mgo"), arg_names=["data"],
                 optimize_for_inference=False, keep_var_name=2, keep_opr_name=True)
    from megengine.utils.comp_graph_tools import GraphInference

    out = GraphInference(str(tmp_path / "model.mgo")).run(data.numpy())
    np.testing.assert_allclose(list(out.values())[0], want, rtol=1e-6)
