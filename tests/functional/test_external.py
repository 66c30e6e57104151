"""Tests for megengine/functional/external.py: each vendor-runtime operator refuses with the
runtime it needs and what to do instead."""
import pytest

import megengine as mge
import megengine.functional.external as E


@pytest.mark.parametrize("call, runtime", [
    (lambda x: E.tensorrt_runtime_opr([x], data=b"engine"), "TensorRT"),
    (lambda x: E.cambricon_runtime_opr([x], b"", "sym", False), "Cambricon"),
    (lambda x: E.atlas_runtime_opr([x], b""), "Atlas"),
    (lambda x: E.magicmind_runtime_opr([x], b""), "MagicMind"),
    (lambda x: E.extern_opr_subgraph([x], [(1,)], "op", b""), "extern-op loader"),
])
def test_vendor_runtimes_are_refused_with_the_reason(call, runtime):
    with pytest.raises(RuntimeError, match=f"serialized {runtime} model.*PyTorchModule"):
        call(mge.tensor([1.0]))
