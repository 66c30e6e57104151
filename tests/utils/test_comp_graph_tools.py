"""Tests for megengine/utils/comp_graph_tools.py's graph functions (dependencies, operator
order, traversal maps, functional replace_vars/replace_oprs) and load_and_inference on input
lists; GraphInference and test cases stored by dump are tested in tests/jit/test_dump.py."""
import io

import numpy as np
import pytest

import megengine as mge
import megengine.functional as F
import megengine.utils.comp_graph_tools as cgtools
from megengine.jit import trace
from megengine.utils.network import Network

X = np.array([1.5, -2.0, 0.5], "float32")
Y = np.array([2.0, 3.0, -1.0], "float32")


def _file():
    f = trace(lambda x, y: F.relu(x * y) - 3, symbolic=True, capture_as_const=True)
    f(mge.tensor(X), mge.tensor(Y))
    file = io.BytesIO()
    f.dump(file, arg_names=["x", "y"], output_names="o")
    file.seek(0)
    return file


def _run_vars(outputs, *inputs):
    net = Network()
    net.add_output(*outputs)
    file = io.BytesIO()
    net.dump(file)
    file.seek(0)
    return list(cgtools.GraphInference(file).run(*inputs).values())


def test_dependencies_and_order():
    net = Network.load(_file())
    (o,) = net.output_vars
    names = [v.name for v in cgtools.get_dep_vars(o)]
    assert names[0] == "o" and set(names) == {"o", "RELU", "MUL", "x", "y", "const()"}
    assert [v.name for v in cgtools.get_dep_vars(o, "Host2DeviceCopy")] == ["x", "y"]
    seq = cgtools.get_oprs_seq(o)  # constants pruned by default
    assert [cgtools.get_opr_type(op) for op in seq] == ["Host2DeviceCopy", "Host2DeviceCopy",
                                                       "Elemwise", "Elemwise", "Elemwise"]
    assert len(cgtools.get_oprs_seq(o, prune_immtensor=False)) == 6
    assert cgtools.get_owner_opr_type(o) == "Elemwise"
    assert [v.name for v in cgtools.get_owner_opr_inputs(o)] == ["RELU", "const()"]


def test_graph_traversal_maps():
    net = Network.load(_file())
    map_oprs, map_vars, var2oprs, opr2receivers, indegree2opr, opr2indegree = \
        cgtools.graph_traversal(net.output_vars)
    x, y = net.input_vars
    mul = net.opr_filter.has_input(x).as_unique()
    assert var2oprs[x.id] == [(mul.id, 0)] and var2oprs[y.id] == [(mul.id, 1)]
    assert opr2receivers[x.owner.id] == [mul.id]
    assert set(map_vars) == {v.id for op in map_oprs.values() for v in op.outputs}
    out_opr = net.output_vars[0].owner
    assert opr2indegree[out_opr.id] == 0 and out_opr.id in indegree2opr[0]


def test_replace_vars_and_oprs_return_new_vars_and_leave_the_graph():
    net = Network.load(_file())
    (o,) = net.output_vars
    x, y = net.input_vars
    (new,) = cgtools.replace_vars([o], {y: x})
    assert new is not o and o.owner.inputs[0].owner.inputs[0].owner.inputs[1] is y
    np.testing.assert_allclose(_run_vars([new], X)[0], np.maximum(X * X, 0) - 3)
    np.testing.assert_allclose(_run_vars([o], X, Y)[0], np.maximum(X * Y, 0) - 3)
    mul = net.opr_filter.has_input(x).as_unique()
    (new2,) = cgtools.replace_oprs([o], {mul: F.add(x, y).owner})
    np.testing.assert_allclose(_run_vars([new2], X, Y)[0], np.maximum(X + Y, 0) - 3)
    with pytest.raises(ValueError, match="outputs"):
        cgtools.replace_oprs([o], {mul: F.cond_take(x > 0, x)[0].owner})


def test_load_and_inference_on_a_list_of_inputs():
    results = cgtools.load_and_inference(_file(), [[X, Y], {"x": Y, "y": X}])
    np.testing.assert_allclose(results[0]["o"], np.maximum(X * Y, 0) - 3)
    np.testing.assert_allclose(results[1]["o"], np.maximum(Y * X, 0) - 3)
    with pytest.raises(ValueError, match="no test cases"):
        cgtools.load_and_inference(_file())


def test_megengine_cgtools_is_comp_graph_tools_and_loads_on_first_use():
    # upstream's megengine/__init__ exposes `cgtools` (1.0-era tests: `from megengine import
    # cgtools`); here it loads lazily, so a fresh `import megengine` does not import it
    import subprocess
    import sys

    code = ("import sys, megengine as mge; assert 'megengine.utils.comp_graph_tools' not in "
            "sys.modules; from megengine import cgtools; "
            "import megengine.utils.comp_graph_tools as c; assert cgtools is c")
    subprocess.run([sys.executable, "-c", code], check=True)
