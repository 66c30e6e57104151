"""TracedModule files (``.tm``) written by upstream MegEngine 1.13 load and run here.

The files, their inputs and upstream's outputs (``.npz``) and upstream's ``print(tm.graph)``
(``.txt``) are in tests/data/upstream_tm, made by its make.py with upstream 1.13 (upstream 1.13
measured: every expected value here is upstream's own).
"""
import io
import json
import os
import pickle
import re

import numpy as np
import pytest

import megengine as mge
import megengine.functional as F
from megengine.traced_module import trace_module

DATA = os.path.join(os.path.dirname(__file__), "..", "data", "upstream_tm")
# (lstm: upstream's LSTM computes with its _flatten_weights, which its pickle holds besides
# the cells' own, unused weights; qat: upstream pickles QParams as (None, {slot: value}))
CASES = ["convnet", "attention", "tensor_ops", "containers", "constants", "kwargs", "lstm",
         "nested", "qat"]


def _case(name):
    data = np.load(os.path.join(DATA, name + ".npz"))
    call = json.loads(str(data["call"]))
    value = lambda p: mge.tensor(data[p[1]]) if p[0] == "t" else p[1]
    args = [value(a) for a in call["args"]]
    kwargs = {k: value(v) for k, v in call["kwargs"].items()}
    n_out = len([k for k in data.files if k.startswith("out")])
    return args, kwargs, [data[f"out{i}"] for i in range(n_out)]


def _flat(out):
    if isinstance(out, dict):
        return [out[k] for k in sorted(out)]
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _assert_outputs(tm, name):
    args, kwargs, expected = _case(name)
    got = _flat(tm(*args, **kwargs))
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape and g.dtype == e.dtype
        np.testing.assert_allclose(g.numpy(), e, rtol=1e-5, atol=1e-6)


def _expr_heads(text):
    """``%id: outputs =`` of each expr line (upstream writes several outputs in parentheses)."""
    return [re.sub(r"[()]", "", m) for m in re.findall(r"%\d+:\t[^=\n]*=", text)]


@pytest.mark.parametrize("name", CASES)
def test_upstream_file_loads_runs_and_names_as_upstream(name):
    tm = mge.load(os.path.join(DATA, name + ".tm"))
    _assert_outputs(tm, name)
    with open(os.path.join(DATA, name + ".txt")) as f:
        upstream_text = f.read()
    assert _expr_heads(str(tm.graph)) == _expr_heads(upstream_text)


@pytest.mark.parametrize("name", ["convnet", "qat"])
def test_upstream_file_loads_with_pickle_load(name):
    with open(os.path.join(DATA, name + ".tm"), "rb") as f:
        tm = pickle.load(f)
    _assert_outputs(tm, name)


@pytest.mark.parametrize("name", ["convnet", "nested", "containers", "kwargs"])
def test_loaded_file_saves_flattens_and_traces_again(name):
    tm = mge.load(os.path.join(DATA, name + ".tm"))
    buf = io.BytesIO()
    mge.save(tm, buf)
    buf.seek(0)
    _assert_outputs(mge.load(buf), name)
    _assert_outputs(tm.flatten(), name)
    args, kwargs, _ = _case(name)
    _assert_outputs(trace_module(tm, *args, **kwargs), name)


def test_loaded_file_graph_edit_against_torch():
    torch = pytest.importorskip("torch")
    tm = mge.load(os.path.join(DATA, "nested.tm"))
    # Outer: out(inner2(inner(x))), Inner: sigmoid(fc(x)) + x. Edit inner's sigmoid to relu.
    graph = tm.inner.graph
    sig = graph.get_function_by_type(F.sigmoid).as_unique()
    assert tm.graph.get_node_by_name("Outer_inner_out").as_unique().name == "inner_out"
    with graph.insert_exprs():
        relu = F.relu(sig.inputs[0])
    graph.replace_node({sig.outputs[0]: relu})
    graph.compile()
    assert not graph.get_function_by_type(F.sigmoid).as_list()

    sd = {k: torch.tensor(np.asarray(v)) for k, v in tm.state_dict().items()}
    linear = lambda p, v: v @ sd[p + ".weight"].T + sd[p + ".bias"]
    (x,), _, _ = _case("nested")
    t = torch.tensor(x.numpy())
    t = torch.relu(linear("inner.fc", t)) + t
    t = torch.sigmoid(linear("inner2.fc", t)) + t
    expected = linear("out", t).numpy()
    np.testing.assert_allclose(tm(x).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_loaded_file_jit_trace_dump():
    from megengine.jit import trace
    from megengine.utils.comp_graph_tools import GraphInference

    tm = mge.load(os.path.join(DATA, "convnet.tm"))
    (x,), _, (expected,) = _case("convnet")

    @trace(symbolic=True, capture_as_const=True)
    def infer(data):
        return tm(data)

    infer(x)
    buf = io.BytesIO()
    infer.dump(buf, arg_names=["data"])
    buf.seek(0)
    got = list(GraphInference(buf).run(x.numpy()).values())[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_upstream_class_not_provided_is_named():
    with pytest.raises(pickle.UnpicklingError, match=r"megengine\.traced_module\.fake_quant"
                                                     r"\.FakeQuantize"):
        mge.load(io.BytesIO(b"cmegengine.traced_module.fake_quant\nFakeQuantize\n."))


def test_upstream_function_not_provided_is_named():
    with open(os.path.join(DATA, "convnet.tm"), "rb") as f:
        data = f.read()
    assert data.count(b"\x8c\x04relu") == 1  # the name of F.relu's CallFunction
    bad = data.replace(b"\x8c\x04relu", b"\x8c\x04relv")
    with pytest.raises(pickle.UnpicklingError, match=r"megengine\.functional\.nn\.relv"):
        mge.load(io.BytesIO(bad))
