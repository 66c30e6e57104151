"""CI slice of tests.fuzz.upstream_read: this fork's sides (the programs handed over, the
judging of upstream's files); upstream's side runs offline, with ``--upstream``."""
import json
import os
import shutil

import numpy as np
import pytest

import megengine as mge
from tests.fuzz import upstream_read
from tests.fuzz.jit_programs import draw

DATA = os.path.join(os.path.dirname(__file__), "..", "data", "upstream_mge")


def test_programs_are_handed_over_with_their_state_and_eager_values(tmp_path):
    stats = upstream_read.hand_over(range(1000, 1004), str(tmp_path))
    assert stats == {"handed over": 4}
    for seed in range(1000, 1004):
        spec = json.loads((tmp_path / f"p{seed}.json").read_text())
        p = draw(seed, train=False, dyn=False, writes=False)
        assert spec == {"source": p.source, "layers": [list(kv) for kv in p.layers]}
        ref = np.load(tmp_path / f"p{seed}.npz")
        prog, m = p.build()  # (the same seeded weights: the same eager values)
        for name, v in [*m.named_parameters(), *m.named_buffers()]:
            np.testing.assert_array_equal(ref[f"state:{name}"], v.numpy())
        out = p.eager(prog, m, mge.tensor(ref["x"]))
        out = out if isinstance(out, (tuple, list)) else [out]
        for i, v in enumerate(out):
            np.testing.assert_array_equal(ref[f"want{i}"], np.asarray(v))


def test_upstreams_files_are_judged_against_eager_then_its_own_values(tmp_path):
    # reopt.mge: a file upstream 1.13 dumped (its input x), with upstream's outputs
    ref = np.load(os.path.join(DATA, "reopt.npz"))
    values = [ref[f"out_{i}"] for i in range(sum(k.startswith("out_") for k in ref))]
    off = [v + 1 for v in values]
    cases = {1: (values, values), 2: (off, values), 3: (off, off), 4: (values, values)}
    for seed, (want, every) in cases.items():
        shutil.copy(os.path.join(DATA, "reopt.mge"), tmp_path / f"u{seed}.mge")
        np.savez(tmp_path / f"p{seed}.npz", x=ref["in_x"],
                 **{f"want{i}": w for i, w in enumerate(want)})
        np.savez(tmp_path / f"u{seed}.npz", **{f"every{i}": w for i, w in enumerate(every)},
                 **{f"shape{i}": np.array(w.shape) for i, w in enumerate(every)})
    # (a model_version upstream never wrote: refused by name)
    (tmp_path / "u4.mge").write_bytes(b"\x10\x00\x00\x00" + bytes(4) + b"mgv2" + bytes(8))
    lines = [["START", "1"], ["DUMPED", "1"], ["DUMPED", "2"], ["DUMPED", "3"],
             ["DUMPED", "4"], ["UNDUMPED", "5", "TypeError:", "ndim", "is", "3"],
             ["UNRUN", "6"], ["DONE"]]
    for seed in (5, 6):  # (programs upstream did not dump: eager values compared still)
        np.savez(tmp_path / f"p{seed}.npz", x=ref["in_x"],
                 **{f"want{i}": w for i, w in enumerate(values)})
    # upstream's eager values: this fork's (1), others (2; 3 slices an inner axis: set apart)
    for seed, v in [(1, values), (2, values), (3, values)]:
        np.savez(tmp_path / f"e{seed}.npz", **{f"eager{i}": w for i, w in enumerate(v)})
    for seed in range(1, 7):
        source = "def prog(x, m):\n    h = x[:, :2]\n" if seed == 3 else "def prog(x, m):\n"
        (tmp_path / f"p{seed}.json").write_text(json.dumps({"source": source, "layers": []}))
    got = upstream_read.read(str(tmp_path), lines)
    assert got["right"] == [1] and got["theirs"] == [2] and got["wrong"] == [3]
    assert list(got["refused"]) == [4] and "model_version 0" in got["refused"][4]
    assert got["failed"] == {} and got["undumped"] == {5: "TypeError: ndim is 3"}
    assert got["unrun"] == [6]
    assert got["eager compared"] == 3 and got["eager differs"] == [2]
    assert got["eager differs, known"] == {3: "a slice of an inner axis (upstream's)"}


def test_the_upstream_interpreter_is_required():
    with pytest.raises(SystemExit):
        upstream_read.main(["--seeds", "1"])


def test_upstreams_output_is_brought_to_the_shape_its_file_declares():
    # after a layout pass upstream's runtime can give the output blocked, (N, C/4, H, W, 4), or
    # with the channels it padded (programs 9381, 9167)
    v = np.arange(2 * 8 * 3 * 3, dtype="float32").reshape(2, 8, 3, 3)
    blocked = v.reshape(2, 2, 4, 3, 3).transpose(0, 1, 3, 4, 2)
    np.testing.assert_array_equal(upstream_read._as_declared(blocked, (2, 8, 3, 3)), v)
    np.testing.assert_array_equal(upstream_read._as_declared(v, (2, 6, 3, 3)), v[:, :6])
    np.testing.assert_array_equal(upstream_read._as_declared(blocked, (2, 6, 3, 3)), v[:, :6])
    assert upstream_read._as_declared(v, (-1,)) is v
    assert upstream_read._as_declared(v, (2, 8, 3, 3)) is v


def test_known_differences_of_eager_values_are_named():
    known = upstream_read._known_difference
    assert known("    h = h[:, :, : max(1, k // 2)]\n") == "a slice of an inner axis (upstream's)"
    assert known("    a = F.topk(h, 2, kth_only=True)[0]\n") is None  # (named: _spellings)
    assert known("    h = F.broadcast_to(h[:1] * 0.5, Tensor(h.shape))\n    h = h + (h - h)\n") == (
        "a write into a broadcast value (upstream's)")
    assert known("    h = h[:2] + h[:, 0]\n") is None
    nan, ours = np.array([np.nan, 0.5]), np.array([0.5, 0.5])
    softmax = "    h = F.softmax(h, axis=1)\n"
    assert known(softmax, [nan], [ours]) == "NaN of upstream's eager softmax (upstream's)"
    assert known(softmax, [ours + 1], [ours]) is None  # other numbers: a finding
    assert known(softmax, [nan], [nan]) is None and known("    h = h * 2\n", [nan], [ours]) is None


def test_upstream_spellings_compute_what_the_programs_mean():
    # the spellings handed to upstream (its API refuses the programs' own) give the values this
    # fork's functions give the programs' calls: rows of a 4-d value sorted, topk in this
    # fork's order, layer_norm and roll by a size held as a 0-d Tensor (as a symbolic trace
    # holds h.shape[-1]), np.prod of a shape Tensor
    import megengine.functional as F

    ns = upstream_read._spellings(mge, F, np)
    sF, snp = ns["F"], ns["np"]
    rng = np.random.RandomState(0)
    h = mge.tensor(rng.randn(2, 3, 4, 5).astype("float32"))
    for got, want in [(sF.sort(h), F.sort(h)), (sF.sort(h, True), F.sort(h, descending=True)),
                      (sF.topk(h, 2), F.topk(h, 2, descending=False)),
                      (sF.topk(h, 2, descending=True), F.topk(h, 2, descending=True)),
                      (sF.topk(h, 2, kth_only=True), F.topk(h, 2, kth_only=True))]:
        for g, w in zip(got, want):
            assert g.shape == w.shape
            np.testing.assert_array_equal(g.numpy(), w.numpy())
    np.testing.assert_array_equal(sF.sort(h[0, 0])[0].numpy(), np.sort(h[0, 0].numpy()))
    want = F.layer_norm(h, h.shape[-1], affine=False).numpy()
    np.testing.assert_allclose(sF.layer_norm(h, h.shape[-1]).numpy(), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sF.layer_norm(h, mge.tensor(5)).numpy(), want,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(sF.roll(h, mge.tensor(2), 1).numpy(), F.roll(h, 2, 1).numpy())
    np.testing.assert_array_equal(sF.roll(h, 2).numpy(), F.roll(h, 2).numpy())
    mask = h > 0.5
    for got, want in [(sF.where(mask), F.where(mask)), (sF.non_zero(mask, as_tuple=True),
                                                         F.non_zero(mask, as_tuple=True)),
                      ((sF.non_zero(mask[0, 0, 0]),), (F.non_zero(mask[0, 0, 0]),))]:
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.shape == w.shape
            np.testing.assert_array_equal(g.numpy(), w.numpy())
    np.testing.assert_array_equal(sF.where(mask, h, -h).numpy(), F.where(mask, h, -h).numpy())
    assert snp.prod(mge.tensor([3, 4, 5])).item() == 60 and snp.prod((3, 4, 5)) == 60
    assert sF.relu is F.relu and snp.float32 is np.float32
