"""CI slice of tests.fuzz.trace_writes: every sequence of two writes in every trace mode (the
offline run adds random sequences of three, and upstream's refusals with ``--upstream``)."""
import itertools
import json

import pytest

from tests.fuzz import trace_writes
from tests.fuzz.trace_writes import MODES, findings, outcomes, run, sequences


def test_every_two_writes_in_every_mode_give_eagers_values_or_an_allowed_refusal():
    # found before: y.set_value(y + x); b.set_value(c) refused by checked calls after the
    # first, b += x; b.set_value(w * 2) leaving b without the set_value in without_host
    # replays (20 findings on the code before those fixes)
    got = outcomes(sequences(2))
    assert len(got) == len(trace_writes.KINDS) ** 2 * len(MODES)
    assert findings(got) == {}
    assert sum(v == "ok" for v in got.values()) > 0.8 * len(got)


def test_a_value_the_trace_does_not_follow_is_wrong(monkeypatch):
    # a Python number that changes between calls is a constant of a without_host replay
    calls = itertools.count()
    monkeypatch.setitem(trace_writes.KINDS, "y_plus_calls",
                        lambda s: s.__setitem__("y", s["y"] + float(next(calls) // 2)))
    assert run(["y_plus_calls"], {"without_host": True}).startswith("wrong: output after call")


def test_findings_are_wrong_values_and_refusals_not_allowed_or_shared_by_upstream():
    checked, const = json.dumps(MODES[0]), json.dumps(MODES[3])
    ours = {(("a",), checked): "ok",
            (("b",), checked): "wrong: w after call 2",
            (("c",), const): "TraceMismatchError: trace error because tensors not equals",
            (("d",), checked): "TraceMismatchError: trace error because tensors not equals",
            (("e",), checked): "TraceMismatchError: trace error because input id mismatch"}
    assert sorted(findings(ours)) == [(("b",), checked), (("d",), checked), (("e",), checked)]
    theirs = {(("b",), checked): "RuntimeError: x", (("d",), checked): "ok",
              (("e",), checked): "RuntimeError: upstream refuses it too"}
    assert sorted(findings(ours, theirs)) == [(("b",), checked), (("d",), checked)]


@pytest.mark.parametrize("length,drawn", [(1, 5), (2, 0)])
def test_sequences_are_every_tuple_then_drawn_triples(length, drawn):
    seqs = sequences(length, drawn, start=3)
    assert len(seqs) == len(trace_writes.KINDS) ** length + drawn
    assert all(len(s) == 3 for s in seqs[len(seqs) - drawn:])
    assert seqs == sequences(length, drawn, start=3)
