"""Test cases in upstream's format (``trace.dump(input_data=..., dump_format="FBS_V2")``), laid
out as upstream 1.13's ``trace.dump`` writes them and its ``load_and_run`` reads them: the
8 bytes ``mgbtest0`` and the number of cases (uint32), the model, then one model per case.

- The model checks each output: ``<output name>:expect`` is one more input (Host2DeviceCopy),
  and an AssertEqual of (expected, output, error) is the model's output in its place (its
  ``maxerr`` and ``verbose``: ``not silent``). The error is upstream's AssertEqual::make's:
  ``max(|expect - output| / max(min(|expect|, |output|), 1))`` in the output's dtype (``//``
  for integers, as upstream's graph divides them). Upstream's runtime takes no ABS of bool
  values (upstream's own dump of a bool output fails when it runs): they are compared as
  int32 here, the error cast to bool (AssertEqual takes three values of one dtype). A
  quantized output is refused unless ``no_assert``. ``no_assert``: no check, no expected
  inputs.
- A case's model holds its values as SharedDeviceTensor operators on ``cpux``, one per input of
  the model (the expected values included) in the order of their names, as its outputs:
  ``load_and_run`` copies output k into the model's k-th input by name, and counts the shared
  tensors of the model (``nr_shared_tensor``) to load them.
"""
import struct

import numpy as np

from ..dump_format import DumpError
from ._base import _Graph, _model_bytes, _operator, _tensor

_MAGIC = b"mgbtest0"


def assert_outputs(g, net, testcases):
    """The vars of the model's outputs: each output's AssertEqual (its expected value a new
    input of the model), or the outputs themselves with ``no_assert``."""
    outs = [g.ids[id(v)] for v in net.output_vars]
    if testcases["no_assert"]:
        return outs
    checks = []
    for v in net.output_vars:
        if np.dtype(v.dtype).metadata is not None:
            raise DumpError(
                f"trace.dump(dump_format='FBS_V2', input_data=...): output {v.name!r} is "
                f"quantized ({v.dtype}), which upstream's element-wise operators cannot "
                "compare for the test cases' check (AssertEqual); dump with no_assert=True "
                "(the cases hold the inputs only), or dequantize the output")
    for v, k in zip(net.output_vars, outs):
        name, shape, dtype = v.name, tuple(v.shape), np.dtype(v.dtype)
        expect = g.var(f"{name}:expect", shape)
        g.ops.append(_operator("Host2DeviceCopy", 2, (63, {}), [], [expect], tensors=[
            _tensor(shape, dtype, "xpux", f"the expected value of output {name!r}",
                    name=f"{name}:expect")]))
        err = _error(g, expect, k, name, shape, dtype)
        params = {0: ("f", float(testcases["maxerr"])), 1: ("?", not testcases["silent"])}
        checks.append(g.op("AssertEqual", 1, 56, params, [expect, k, err],
                           [(f"assert_eq({name}:expect,{name})", shape)])[0])
    return checks


def _error(g, expect, real, name, shape, dtype):
    """The var of upstream's AssertEqual error of ``expect`` and ``real`` (a (1,) value)."""
    if dtype.kind == "b":  # (bool: computed as int32, the error given as bool)
        expect, real = (g.cast(k, np.int32, f"{name}:{what}:int32", shape)
                        for k, what in ((expect, "expect"), (real, "real")))
        err = _error(g, expect, real, name, shape, np.dtype(np.int32))
        return g.cast(err, dtype, f"{name}:error:bool", (1,))
    one = g.const(np.ones(1, dtype), "xpux", f"{name}:one")
    diff = g.elemwise("ABS", [g.elemwise("SUB", [expect, real], f"{name}:sub", shape)],
                      f"{name}:abs_sub", shape)
    low = g.elemwise("MIN", [g.elemwise("ABS", [expect], f"{name}:abs_expect", shape),
                             g.elemwise("ABS", [real], f"{name}:abs_real", shape)],
                     f"{name}:min", shape)
    div = "TRUE_DIV" if dtype.kind == "f" else "FLOOR_DIV"
    rel = g.elemwise(div, [diff, g.elemwise("MAX", [low, one], f"{name}:max", shape)],
                     f"{name}:relative", shape)
    return g.reduce_all("MAX", rel, f"{name}:error", "xpux", f"{name}:error")


def testcase_bytes(model, graph, arrays):
    """The file: ``model`` (the model's bytes) with the header and the models of the cases of
    ``graph["testcases"]`` (`megengine.jit.dump.program_json`; ``arrays``: its arrays)."""
    tc = graph["testcases"]
    parts = [_MAGIC, struct.pack("<I", len(tc["cases"])), model]
    for case in tc["cases"]:
        values = {**case["inputs"]}
        if not tc["no_assert"]:
            values.update((f"{n}:expect", i) for n, i in case["outputs"].items())
        parts.append(_case_model([(n, arrays[values[n]]) for n in sorted(values)]))
    return b"".join(parts)


def _case_model(values):
    """A case's model: SharedDeviceTensor operators of ``values`` ([(name, array)]), each an
    output, on cpux as upstream's are."""
    g = _Graph()
    for name, value in values:
        value = np.asarray(value)
        g.ops.append(_operator("SharedDeviceTensor", 1, None, [], [g.var(name, value.shape)],
                               tensors=[_tensor(value.shape, value.dtype, "cpux",
                                                f"test case value {name!r}", value=value)]))
    return _model_bytes(g, range(len(values)), {6: ("I", len(values))})
