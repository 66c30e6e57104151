"""CI slice of the fuzzer's quantized mode (`quantized_inputs`): a few seeds of every op with its
float32 inputs quantized, and checks that the mode catches what it must."""
import numpy as np
import pytest
import torch

import megengine as mge
import megengine.functional as F

from devices import host_default_device  # noqa: F401  (the fixture below)

from .gen import Case, Mismatch
from .quantized_inputs import run_quantized
from .registry import OPS, run_seed

# quantized tensors live on CPU devices only: on a CUDA machine these run on cpu0
pytestmark = pytest.mark.usefixtures("host_default_device")

SEEDS_PER_OP = 6  # about a third of the drawn cases have float32 inputs


@pytest.mark.parametrize("name", sorted(OPS))
def test_fuzz_quantized_slice(name):
    for seed in range(SEEDS_PER_OP):
        run_seed(name, seed, "quantized")  # raises Mismatch (with the drawn case)


def _run(mge_fn, torch_fn):
    x = np.arange(-2, 4, dtype=np.float32).reshape(2, 3)
    return run_quantized(Case("probe", [x], mge_fn, torch_fn, layouts=False),
                         np.random.default_rng(0))


def _plain(t):
    return t.numpy().view(t.dtype.str)  # the stored integers, without the scale


def test_quantized_mode_accepts_values_and_refusals():
    assert _run(lambda q: q.astype("float32"), lambda v: v) == "ok"
    assert _run(lambda q: F.concat([q, q]), lambda v: torch.cat([v, v])) == "ok"
    assert _run(lambda q: q.astype("float32") * 1000, lambda v: v * 1000) == "ok"
    assert _run(lambda q: (q.astype("float32") * 1000).astype(q.dtype),
                lambda v: v * 1000) == "ok"  # (saturated at the dtype's range)
    assert _run(lambda q: F.mul(q, q), lambda v: v * v) == "refused"


def test_quantized_mode_catches_the_stored_integers():
    with pytest.raises(Mismatch, match="values differ"):  # a float function of the integers
        _run(lambda q: F.exp(mge.tensor(_plain(q))), torch.exp)
    with pytest.raises(Mismatch, match="dtype int8, expected float32"):  # the scale dropped
        _run(lambda q: mge.tensor(_plain(q)), lambda v: v)
    with pytest.raises(Mismatch, match="more than half a step"):  # a step off
        _run(lambda q: (q.astype("float32") + 1).astype(q.dtype), lambda v: v)


def test_quantized_mode_catches_other_errors_and_cast_warnings():
    with pytest.raises(Mismatch, match="megengine raised ShapeError"):
        _run(lambda q: F.reshape(q, (7,)), lambda v: v.reshape(6))
    with pytest.raises(Mismatch, match="numpy warned: invalid value encountered in cast"):
        _run(lambda q: mge.tensor(np.full((2, 3), np.nan).astype(np.int32)).astype("float32"),
             lambda v: v)


def test_command_line_runs_the_quantized_mode_on_cpu0(capsys):
    # quantized tensors live on CPU devices only: with a GPU (real or simulated) as the default
    # device every case crashed converting its inputs ("quantized tensors are supported on CPU
    # devices only"); the command line runs the mode on cpu0 and puts the default back
    from .__main__ import main

    previous = mge.get_default_device()
    other = "gpu0" if mge.is_cuda_available() else "cpu1"  # (tests/simcuda counts as CUDA)
    mge.set_default_device(other)
    try:
        assert main(["--quantized", "--seeds", "3", "--op", "relu", "--op", "matmul",
                     "--op", "conv2d"]) == 0
        assert mge.get_default_device() == other
    finally:
        mge.set_default_device(previous)
    out = capsys.readouterr().out
    assert "crash" not in out and "3 ops, 3 seeds each, 0 discrepancies (device cpu0)" in out
