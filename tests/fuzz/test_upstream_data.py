"""CI's slice of tests/fuzz/upstream_data.py: this checkout against upstream MegEngine 1.13's
recorded results of 60 drawn data pipelines (tests/fuzz/upstream_data.json, written by
``python -m tests.fuzz.upstream_data --upstream PYTHON --seeds 60 --record FILE``), and the
documented differences its rule counts."""
import os

import pytest

import megengine.data.transform.vision.functional as VF
from tests.fuzz import both_engines as be
from tests.fuzz import upstream_data as ud

RECORD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "upstream_data.json")
OK = ["ok", None]
CROP = ("np.random.seed(1)\nDATA.seed(2)\nt = T.Compose([T.RandomCrop(3, padding_size=2)], "
        "order=('image', 'boxes'))\nout = snap(t.apply(sample(('image', 'boxes'), 4, 4, 1, "
        "'uint8')))")
SAMPLER = ("np.random.seed(1)\nDATA.seed(2)\ns = D.SequentialSampler(ArrayDataset(np.arange(9)), "
           "batch_size=2, indices=[1, 2, 4]{})\nit = iter(s)\nout = [len(s), list(it), list(it)]")


@pytest.fixture(autouse=True)
def _resize_as_before(monkeypatch):
    # the programs turn off resize's Intel IPP path (upstream_data.PRELUDE): restored after
    monkeypatch.setattr(VF, "_OPENCV_USES_IPP", VF._OPENCV_USES_IPP)


def test_this_checkout_gives_upstreams_recorded_results():
    n, shown, outcomes = ud.FUZZER.replay(RECORD)
    assert n == 60 and not shown, "\n".join(shown)
    assert outcomes["same"] >= 250, outcomes
    # upstream's results, not this checkout's: its documented differences are in it
    assert outcomes["a sampler given indices counts them"] >= 5, outcomes
    assert outcomes["RandomCrop in a Compose pads every part"] >= 2, outcomes


def test_a_crop_in_a_compose_of_boxes_is_counted_and_alone_is_a_finding():
    image = ["uint8", [3, 3, 1], [0.0]]
    boxes_here = ["ok", [image, ["float32", [1, 4], [3.0, 3.0, 4.0, 4.0]]]]
    boxes_upstream = ["ok", [image, ["float32", [1, 4], [1.0, 1.0, 2.0, 2.0]]]]
    _, got, counts = be.compare(("pass", [CROP]), [OK, boxes_here], [OK, boxes_upstream], ud.rule,
                                ud.FUZZER.tol)
    assert got is None and counts["RandomCrop in a Compose pads every part"] == 1
    alone = CROP.replace("T.Compose([T.RandomCrop(3, padding_size=2)], ",
                         "T.RandomCrop(3, padding_size=2, ")
    _, got, _ = be.compare(("pass", [alone]), [OK, boxes_here], [OK, boxes_upstream], ud.rule,
                           ud.FUZZER.tol)
    assert got == "step 1: values differ"


def test_a_samplers_length_over_indices_is_counted_but_not_other_batches():
    here, upstream = ["ok", [2, [[1, 2], [4]], []]], ["ok", [5, [[1, 2], [4]], []]]
    step = SAMPLER.format("")
    _, got, counts = be.compare(("pass", [step]), [OK, here], [OK, upstream], ud.rule,
                                ud.FUZZER.tol)
    assert got is None and counts["a sampler given indices counts them"] == 1
    _, got, _ = be.compare(("pass", [step]), [OK, here], [OK, ["ok", [5, [[1, 4], [2]], []]]],
                           ud.rule, ud.FUZZER.tol)
    assert got == "step 1: values differ"
    # over ranks upstream pads each share to the dataset's count: batches differ too
    step = SAMPLER.format(", world_size=2, rank=0")
    _, got, counts = be.compare(("pass", [step]), [OK, ["ok", [1, [[1, 4]], []]]],
                                [OK, ["ok", [3, [[1, 4], [1, 4], [1]], []]]], ud.rule,
                                ud.FUZZER.tol)
    assert got is None and counts["a sampler given indices counts them"] == 1


def test_a_record_keeps_integer_arrays_as_digests_and_floats_whole():
    value = [["uint8", [2], [1.0, 2.0]], ["float32", [1], [0.5]], [3, [[1, 2]], []]]
    kept = ud.integers_as_digests(value)
    assert kept[0][2].startswith("#sha1:") and kept[1:] == value[1:]
    assert be.close(value, kept, ud.FUZZER.tol)
    assert not be.close([["uint8", [2], [1.0, 3.0]]] + value[1:], kept, ud.FUZZER.tol)


def test_every_program_builds_here():
    programs = [ud.draw(s) for s in range(7000, 7040)]
    results = be.run_all(programs, ud.PRELUDE)
    assert all(r[0] == ["ok", None] for r in results)
    steps = [r for rs in results for r in rs[1:]]
    assert len(steps) >= 150 and sum(r[0] == "ok" for r in steps) >= 100
