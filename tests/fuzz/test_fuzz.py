"""CI slice of the differential fuzzer: a few fixed seeds of every fuzzed op (the full runs are
offline, `python -m tests.fuzz`), and checks that the runner itself catches what it must."""
import numpy as np
import pytest
import torch

import megengine.functional as F

from .gen import Case, Mismatch, run
from .registry import OPS, run_seed

SEEDS_PER_OP = 4  # ~100 ops: about 400 cases, a few seconds


@pytest.mark.parametrize("name", sorted(OPS))
def test_fuzz_slice(name):
    for seed in range(SEEDS_PER_OP):
        run_seed(name, seed)  # raises Mismatch (with the drawn case) on a discrepancy


def test_command_line(capsys):
    from .__main__ import main

    assert main(["--seeds", "2", "--op", "add", "--op", "conv2*"]) == 0
    out = capsys.readouterr().out
    assert "conv2d" in out and "2 ops, 2 seeds each, 0 discrepancies" in out


def test_every_family_is_fuzzed():
    families = {family for family, _ in OPS.values()}
    assert families >= {"elemwise", "reduction", "matmul", "indexing", "shape", "sorting",
                        "activation", "loss", "normalization", "conv", "pool", "vision",
                        "module", "optimizer", "scheduler", "grad2"}


# ----- the runner must fail where megengine is wrong -----

def _case(mge_fn, torch_fn, x=None, **kw):
    x = np.arange(6, dtype=np.float32).reshape(2, 3) if x is None else x
    return Case("probe", [x], mge_fn, torch_fn, layouts=False, **kw)


def test_runner_catches_a_wrong_value():
    with pytest.raises(Mismatch, match="values differ"):
        run(_case(lambda a: a + 1e-3, lambda a: a), np.random.default_rng(0))


def test_runner_catches_a_wrong_gradient():
    # the same value, but a gradient scaled by 2 on megengine's side
    with pytest.raises(Mismatch, match="grad of input 0"):
        run(_case(lambda a: a * 2 - a.detach(), lambda a: a), np.random.default_rng(0))


def test_runner_catches_a_wrong_dtype_and_shape():
    with pytest.raises(Mismatch, match="dtype"):
        run(_case(lambda a: a.astype("float16"), lambda a: a), np.random.default_rng(0))
    with pytest.raises(Mismatch, match="shape"):
        run(_case(lambda a: a.reshape(3, 2), lambda a: a), np.random.default_rng(0))


def test_runner_wants_megengine_own_error_where_torch_refuses():
    # a raw numpy error deep in the engine is not a clear message
    def raw(a):
        return F.reshape(a, (6,)) + np.ones(4, np.float32).reshape(2, 3)  # numpy raises

    with pytest.raises(Mismatch, match="not its own"):
        run(_case(raw, lambda a: a.reshape(6) + torch.ones(4).reshape(2, 3)),
            np.random.default_rng(0))
    # megengine's own refusal where torch refuses too is a pass
    assert run(_case(lambda a: F.reshape(a, (4,)), lambda a: a.reshape(4)),
               np.random.default_rng(0)) == "error"


def test_runner_catches_acceptance_of_what_upstream_refuses():
    with pytest.raises(Mismatch, match="upstream refuses"):
        run(_case(lambda a: a, lambda a: a, refuse="probe"), np.random.default_rng(0))
