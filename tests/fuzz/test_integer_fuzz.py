"""CI slice of the fuzzer's integer mode (`integer_inputs`): a few seeds of every op with its
float32 inputs as integer or bool tensors, and checks that the mode catches what it must."""
import numpy as np
import pytest
import torch

import megengine as mge
import megengine.functional as F

from .gen import Case, Mismatch
from .integer_inputs import run_integer
from .registry import OPS, run_seed

SEEDS_PER_OP = 4  # about a third of the drawn cases have float32 inputs


@pytest.mark.parametrize("name", sorted(OPS))
def test_fuzz_integer_slice(name):
    for seed in range(SEEDS_PER_OP):
        run_seed(name, seed, "int")  # raises Mismatch (with the drawn case)


def _run(mge_fn, torch_fn, x=None):
    x = np.arange(-2, 4, dtype=np.float32).reshape(2, 3) if x is None else x
    return run_integer(Case("probe", [x], mge_fn, torch_fn, layouts=False),
                       np.random.default_rng(0))


def test_integer_mode_accepts_values_wrapping_and_refusals():
    assert _run(lambda x: x + x, lambda v: v + v) == "ok"
    assert _run(F.exp, torch.exp) == "ok"  # (float32 of the values)
    assert _run(lambda x: F.sum(x * 100), lambda v: torch.sum(v * 100),
                np.full((2, 3), 2, np.float32)) == "ok"  # (int8 sums wrap, as upstream's)
    assert _run(lambda x: F.nn.dropout(x, 0.5), lambda v: v) == "refused"  # (says to convert)


def test_integer_mode_catches_wrong_values_and_dtypes():
    with pytest.raises(Mismatch, match="an integer result must be exact"):  # truncated
        _run(lambda x: (x.astype("float32") / 2).astype(x.dtype), lambda v: v / 2)
    with pytest.raises(Mismatch, match="dtype float64, expected one of"):
        _run(lambda x: x.astype("float64"), lambda v: v)
    with pytest.raises(Mismatch, match="values differ"):  # a float function, off
        _run(lambda x: F.exp(x) + 1e-3, torch.exp)


def test_integer_mode_rounds_where_the_case_says_the_op_rounds():
    # upstream's int8 Resize rounds half away from zero: torch's -1.5 and 2.5 are -2 and 3 and
    # its -0.75 is -1; the mode expects that only of a case that says so (``rounds``)
    x = np.array([[-3.0, 0.0, 5.0, 0.0, 7.0]], np.float32)

    def run(rounds, by, trunc=False):
        def fn(x):
            v = x.astype("float32") / by
            return (v if trunc else F.sign(v) * F.floor(F.abs(v) + 0.5)).astype(x.dtype)
        case = Case("probe", [x], fn, lambda v: v / by, layouts=False, rounds=rounds)
        return {run_integer(case, np.random.default_rng(seed)) for seed in range(8)}

    assert run(True, 2) == run(True, 4) == {"ok"}
    with pytest.raises(Mismatch, match="an integer result must be exact"):
        run(False, 2)
    with pytest.raises(Mismatch, match="an integer result must be exact"):  # truncated
        run(True, 4, trunc=True)


def test_integer_mode_catches_other_errors_and_cast_warnings():
    def refuse(x):
        raise TypeError("probe: not taken")  # (it does not say what to do)

    with pytest.raises(Mismatch, match="megengine raised TypeError"):
        _run(refuse, lambda v: v)
    with pytest.raises(Mismatch, match="numpy warned: invalid value encountered in cast"):
        _run(lambda x: mge.tensor(np.full((2, 3), np.nan).astype(np.int32)).astype("float32"),
             lambda v: v)


def test_integer_mode_casts_torchs_values_into_a_written_input():
    # F.full_like(x, 2.5) stores x's dtype: torch's op on the float values shows 2.5, which
    # ``writes`` casts as the integer tensor holds it (2), a bool one (True)
    def case(writes, dtype=None):
        return Case("probe", [np.array([[0, 1], [1, 0]], np.float32)],
                    lambda x: F.full_like(x, 2.5), lambda v: torch.full_like(v, 2.5, dtype=dtype),
                    layouts=False, writes=writes)
    for seed in range(6):  # (int32, int8, uint8, int64 and bool, drawn by seed)
        assert run_integer(case(0), np.random.default_rng(seed)) == "ok"
    # (float32 in torch's op on the integer arrays too, the mode's second oracle, which would
    # otherwise store 2.5 as the input's dtype does)
    with pytest.raises(Mismatch, match="an integer result must be exact"):
        run_integer(case(None, torch.float32), np.random.default_rng(0))


def test_pad_fills_a_bool_tensor_with_its_constant_cast_to_bool():
    # seed 70081 pads a bool x with constant_value=1.5: torch's pad of a bool tensor and
    # megengine's store True; torch's pad on the float values shows 1.5 (its oracle in this
    # mode), which the case's ``writes`` casts into x's dtype
    x = mge.tensor([True])
    assert F.nn.pad(x, [(0, 1)], constant_value=1.5).numpy().tolist() == \
        torch.nn.functional.pad(torch.tensor([True]), (0, 1), value=1.5).tolist()
    assert run_seed("pad", 70081, "int") == "ok"


def test_remap_of_an_integer_image_rounds_its_border_value():
    # seed 101977: an int64 image remapped with border value 1.5 reads 2 outside, as upstream
    # 1.13's remap of a uint8 / int8 image (measured), where torch's float path keeps 1.5
    assert run_seed("remap_modes", 101977, "int") == "ok"


def test_scatter_cases_draw_no_duplicate_positions():
    # a broadcast layout of the index repeats its positions, where torch's write is unspecified
    # (int8 seed 90015: torch took another source value than megengine)
    rng = np.random.default_rng(0)
    for _ in range(50):
        case = OPS["scatter"][1](rng)
        assert not case.bcast


def test_integer_mode_takes_a_float_result_of_wrapped_integers_from_torchs_integer_op():
    # seed 100076: uint8 l1_loss's mean averages |1 - 2| = 255 (uint8 arithmetic wraps, in
    # upstream and in torch), where torch's op on the float values says 1; torch's op on the
    # integer arrays themselves is the second oracle, as it is for integer results
    p, y = np.array([[1, 5]], np.float32), np.array([[2, 5]], np.float32)

    def case(off):
        return Case("probe", [p, y], lambda a, b: F.mean(F.abs(a - b)) + off,
                    lambda a, b: (a - b).abs().sum() / 2, layouts=False)
    for seed in range(30):  # (both uint8 at seeds 22, 26 and 29)
        assert run_integer(case(0), np.random.default_rng(seed)) == "ok"
        with pytest.raises(Mismatch, match="values differ"):
            run_integer(case(0.5), np.random.default_rng(seed))
    assert run_seed("l1_loss", 100076, "int") == "ok"
    u8 = torch.tensor([[1, 5]], dtype=torch.uint8), torch.tensor([[2, 5]], dtype=torch.uint8)
    want = torch.nn.functional.l1_loss(*u8, reduction="none").sum() / 2
    got = F.nn.l1_loss(*[mge.tensor(t.numpy()) for t in u8])
    assert got.dtype == np.float32 and got.numpy() == want.numpy()


def test_integer_mode_takes_bool_sums_that_torchs_bool_op_gives():
    # bool True + True is True here as in torch (docs/compatibility.rst), where torch's op on
    # the values says 2: seeds 100141 (x + y) and 100241 (sliding_window_transpose of bools,
    # torch's fold of bools) compare with torch's op on the bools; F.einsum of one bool operand
    # summed counts its Trues in int32 (seed 100139, '...b->...': earlier numpy's or, which
    # torch's count said was > 0), and a contraction of two bools is refused as F.matmul's, as
    # torch refuses it
    for name, seed in (("add", 100141), ("sliding_window_transpose", 100241),
                       ("einsum", 100139)):
        assert run_seed(name, seed, "int") == "ok"
    b = np.array([[True, True], [False, True]])
    assert F.einsum("ij->j", mge.tensor(b)).numpy().tolist() == \
        torch.einsum("ij->j", torch.tensor(b)).tolist() == [1, 2]
    with pytest.raises(TypeError, match="einsum: the operands are bool"):
        F.einsum("ij,jk->ik", mge.tensor(b), mge.tensor(b))
    # an integer sum given as bool still differs from torch's (its sum of bools, drawn by
    # _run's rng, counts in int64)
    with pytest.raises(Mismatch, match="an integer result must be exact"):
        _run(lambda x: F.sum(x).astype("bool"), torch.sum, np.array([[1, 1]], np.float32))


def test_torchs_answer_is_taken_on_contiguous_copies_of_the_views():
    # int seed 101629: torch 2.13's CPU conv_transpose2d of a channels-last input and a
    # permuted weight (grouped, dilated) computes other values than on contiguous copies of
    # them; megengine (no memory formats) gave the copies' values and was reported
    assert run_seed("conv_transpose2d", 101629, "int") == "ok"
    x = torch.arange(20.0).reshape(2, 2, 5, 1).permute(0, 3, 1, 2) % 5 - 2  # (2, 1, 2, 5)
    x = torch.cat([x, x.flip(3)], 1).contiguous(memory_format=torch.channels_last)
    w = (torch.arange(12.0).reshape(2, 3, 2, 1) % 4 - 1).permute(0, 2, 3, 1)  # (2, 2, 1, 3)
    kw = dict(stride=(2, 1), padding=(0, 2), dilation=(2, 1), groups=2)
    got = F.conv_transpose2d(mge.tensor(x.numpy()), mge.tensor(w.numpy()), **kw).numpy()
    want = torch.nn.functional.conv_transpose2d(x.contiguous(), w.contiguous(), **kw).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
