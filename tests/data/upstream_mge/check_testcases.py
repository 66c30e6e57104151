"""Test cases this fork writes in upstream's format (``trace.dump(input_data=...,
dump_format="FBS_V2")``), run as upstream 1.13's load_and_run runs them: the ``mgbtest0``
header and count, the model, then one model per case whose SharedDeviceTensor outputs feed the
model's inputs in the order of their names; the model's AssertEqual operators check its outputs.
Checked by hand (upstream's runtime is not a test dependency); no files are kept.

    # 1. with this fork: writes DIR/testcases_*.mge
    PYTHONPATH=/path/to/fork python tests/data/upstream_mge/check_testcases.py write DIR
    # 2. with upstream 1.13 (Python 3.10), from a directory where the fork is not importable:
    #    each file's cases pass, and fail once any expected value is changed
    cd /tmp && python3.10 /path/to/fork/tests/data/upstream_mge/check_testcases.py check DIR
"""
import io
import os
import struct
import sys

import numpy as np


def write(out_dir):
    import megengine as mge
    import megengine.functional as F
    import megengine.module as M
    from megengine.jit import trace

    rng = np.random.RandomState(1)
    x, x2 = rng.rand(2, 4).astype("float32"), rng.rand(3, 4).astype("float32")
    net = M.Sequential(M.Linear(4, 3), M.ReLU())
    net.eval()
    fns = {"linear": net,
           "dtypes": lambda x: ((x * 3).astype("int32"), x > 0.5, F.relu(x).astype("float16"))}
    for name, fn in fns.items():
        f = trace(fn, symbolic=True, capture_as_const=True)
        f(mge.tensor(x))
        for tag, opts in (("", {}), ("_silent", {"silent": True, "maxerr": 1e-3}),
                          ("_noassert", {"no_assert": True})):
            f.dump(os.path.join(out_dir, f"testcases_{name}{tag}.mge"), arg_names=["data"],
                   input_data=[x, x2], dump_format="FBS_V2", **opts)


def _split(data):
    size = struct.unpack_from("<I", data, 0)[0]
    return data[:4 + size], data[4 + size:]


def _run(path, corrupt=None):
    """Run every case of ``path``; ``corrupt``: the name of an expected value to change."""
    import megengine.core.tensor.megbrain_graph as G
    from megengine.utils.comp_graph_tools import GraphInference, get_dep_vars

    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"mgbtest0", data[:8]
    count = struct.unpack_from("<I", data, 8)[0]
    model, rest = _split(data[12:])
    loaded = G.load_graph(io.BytesIO(model))
    names = sorted(v.name for v in get_dep_vars(loaded.output_vars_list, "Host2DeviceCopy"))
    net = GraphInference(io.BytesIO(model))
    for _ in range(count):
        case, rest = _split(rest)
        outs = G.load_graph(io.BytesIO(case)).output_vars_list
        assert [v.owner.type for v in outs] == ["SharedDeviceTensor"] * len(names)
        feeds = dict(zip(names, GraphInference(io.BytesIO(case)).run().values()))
        if corrupt is not None:
            v = feeds[corrupt]
            feeds[corrupt] = ~v if v.dtype == bool else (v + 1).astype(v.dtype)
        net.run(inp_dict=feeds)
    assert not rest, f"{len(rest)} bytes after the cases"
    return count, names


def check(out_dir):
    for name in sorted(f for f in os.listdir(out_dir) if f.startswith("testcases_")):
        path = os.path.join(out_dir, name)
        count, names = _run(path)
        failed = []
        for n in (n for n in names if n.endswith(":expect")):
            try:
                _run(path, n)
            except RuntimeError as e:
                assert "Unequal value" in str(e), e
                failed.append(n)
        expects = [n for n in names if n.endswith(":expect")]
        assert failed == expects, (failed, expects)
        print(f"{name}: {count} cases pass on upstream; each of {len(failed)} changed "
              "expected values fails its check")


if __name__ == "__main__":
    {"write": write, "check": check}[sys.argv[1]](sys.argv[2])
