"""CI's slice of tests/fuzz/upstream_train.py: this checkout against upstream MegEngine 1.13's
recorded results of 40 drawn training programs (tests/fuzz/upstream_train.json, written by
``python -m tests.fuzz.upstream_train --upstream PYTHON --seeds 40 --record FILE``), and the
documented differences and the rounding its rule counts."""
import os

import numpy as np

import megengine as mge

from tests.fuzz import both_engines as be
from tests.fuzz import upstream_train as ut

RECORD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "upstream_train.json")
OK = ["ok", None]
CHECKPOINT = "net.load_state_dict(ck['net'])\nopt.load_state_dict(ck['opt'])\nout = snap()"


def test_this_checkout_gives_upstreams_recorded_results():
    n, shown, outcomes = ut.FUZZER.replay(RECORD)
    assert mge.config.async_level == 2  # (the programs set it on upstream's side only)
    assert n == 40 and not shown, "\n".join(shown)
    assert outcomes["same"] >= 180 and outcomes["float16 rounding"] >= 5, outcomes
    # upstream's results, not this checkout's: its documented difference is in it
    assert outcomes["upstream misses a parameter's state"] >= 3, outcomes


def test_the_programs_cover_what_users_train_with():
    sources = "\n".join(b + "\n".join(s) for b, s in (ut.draw(seed) for seed in range(40)))
    for part in ["symbolic=True", "symbolic=False", "M.BatchNorm", "Res(", "M.ConvBnRelu2d",
                 "M.LayerNorm", "optim.Adam", "momentum=0.9", "clip_grad_norm", "callbacks=",
                 "label_smooth", "net.eval()", "opt.load_state_dict", "sched.step()",
                 "amp.autocast()", "scaler.backward", "y, axis=1", "M.ConvTranspose2d",
                 "F.nn.interpolate", "x.shape[0]", "LinearBn", "m.eval()", "M.Embedding",
                 "from_pretrained", "M.MultiHeadAttention", "attn_mask=", "M.Conv1d",
                 "y, axis=2", "for x in (x", "gm.record()", "gm.release()",
                 "register_forward_hook", "register_forward_pre_hook", "self.tie(F.relu(self.tie",
                 "M.init.zeros_", "M.init.fill_", "set_value", "weight[0] = 0"]:
        assert part in sources, part


def test_values_within_rounding_agree_and_others_are_findings():
    program = ("net = 1", ["out = snap(loss)"])
    _, got, _ = be.compare(program, [OK, ["ok", [1.0, 0.0055632]]],
                           [OK, ["ok", [1.0, 0.0055631]]], ut.rule, ut.FUZZER.tol)
    assert got is None
    _, got, _ = be.compare(program, [OK, ["ok", [1.0, 0.0056]]], [OK, ["ok", [1.0, 0.0055]]],
                           ut.rule, ut.FUZZER.tol)
    assert got == "step 1: values differ"


def test_upstream_refusing_its_own_optimizer_state_is_counted_only_there():
    program = ("net = 1", [CHECKPOINT])
    theirs = [OK, ["raise", "KeyError", "0", ["KeyError", "LookupError", "Exception"]]]
    _, got, counts = be.compare(program, [OK, ["ok", 1]], theirs, ut.rule, ut.FUZZER.tol)
    assert got is None and counts["upstream misses a parameter's state"] == 1
    # another step, or another error, is not that difference
    _, got, counts = be.compare(("net = 1", ["out = snap()"]), [OK, ["ok", 1]], theirs, ut.rule)
    assert counts["upstream raises"] == 1 and not counts["upstream misses a parameter's state"]
    mine = [OK, ["raise", "ValueError", "bad", ["ValueError", "Exception"]]]
    _, got, _ = be.compare(program, mine, theirs, ut.rule)
    assert got.startswith("step 1: an error of another type")


def test_every_program_builds_and_trains_here():
    results = be.run_all([ut.draw(s) for s in range(9000, 9030)], ut.PRELUDE)
    assert all(r[0] == OK for r in results)
    losses = [r[1][0] for rs in results for r in rs[1:] if r[0] == "ok" and
              isinstance(r[1], list) and len(r[1]) == 3 and isinstance(r[1][0], float)]
    assert len(losses) >= 30 and all(np.isfinite(losses))


def test_drawn_values_are_the_generators_own():
    ns = {}
    exec(ut.PRELUDE, ns)
    v = ns["values"]((2, 3), 7)
    assert v.dtype == np.float32 and v.shape == (2, 3)
    assert ((v * 4096) == np.round(v * 4096)).all() and (-1 <= v).all() and (v < 1).all()
    # the first value by hand: state 7 * 2654435761 % 2**31 + 1, one LCG step, bits 4.. mod 8192
    state = (1103515245 * (7 * 2654435761 % 2 ** 31 + 1) + 12345) % 2 ** 31
    assert v[0, 0] == ((state >> 4) % 8192 - 4096) / 4096
    assert not np.array_equal(v, ns["values"]((2, 3), 8))


def test_float16_rounding_is_counted_only_under_autocast():
    mine, theirs = [OK, ["ok", [1.0, 0.5]]], [OK, ["ok", [1.0, 0.503]]]
    amp = ("with amp.autocast():\n    logits = net(x)", ["out = snap(loss)"])
    _, got, counts = be.compare(amp, mine, theirs, ut.rule, ut.FUZZER.tol)
    assert got is None and counts["float16 rounding"] == 1
    _, got, _ = be.compare(("net = 1", ["out = snap(loss)"]), mine, theirs, ut.rule,
                           ut.FUZZER.tol)
    assert got == "step 1: values differ"
    _, got, _ = be.compare(amp, mine, [OK, ["ok", [1.0, 0.6]]], ut.rule, ut.FUZZER.tol)
    assert got == "step 1: values differ"


def test_upstreams_traced_grad_scaler_is_set_apart_from_its_second_call_on():
    build = ("    with gm:\n        with amp.autocast():\n            logits = net(x)\n"
             "        scaler.backward(gm, loss)\ntrain_step = trace(train_step, symbolic=False)")
    train = "loss = train_step(x, y)\nout = snap(loss)"
    mine, theirs = [OK, ["ok", [1.0]], ["ok", [2.0]]], [OK, ["ok", [1.0]], ["ok", [9.0]]]
    _, got, counts = be.compare((build, [train, train]), mine, theirs, ut.rule, ut.FUZZER.tol)
    assert got is None and counts["upstream's traced GradScaler leaves gradients scaled"] == 1
    # a symbolic trace or no scaler: float16 differences grown over the steps
    for other in [build.replace("symbolic=False", "symbolic=True"),
                  build.replace("scaler.backward(gm, loss)", "gm.backward(loss)")]:
        _, got, counts = be.compare((other, [train, train]), mine, theirs, ut.rule,
                                    ut.FUZZER.tol)
        assert got is None and counts["float16 rounding grown over steps"] == 1
    # the first train step beyond float16 rounding, or any step without autocast: a finding
    _, got, _ = be.compare((build, [train, train]), [OK, ["ok", [2.0]], ["ok", [2.0]]],
                           [OK, ["ok", [9.0]], ["ok", [2.0]]], ut.rule, ut.FUZZER.tol)
    assert got == "step 1: values differ"
    plain = build.replace("        with amp.autocast():\n", "")
    _, got, _ = be.compare((plain, [train, train]), mine, theirs, ut.rule, ut.FUZZER.tol)
    assert got == "step 2: values differ"


def test_autocast_programs_leave_out_what_float16_sums_part():
    for seed in range(300):
        d = ut.Draw(seed)
        build = d.build()
        if "amp.autocast()" in build:
            assert not d.dense and "reduction='sum'" not in build and "MaxPool" not in build
            assert "AdaptiveAvgPool2d" not in build and "optim.SGD" in build


def test_a_first_autocast_step_apart_at_a_kink_is_counted_but_a_left_scale_is_a_finding():
    build = "    with gm:\n        with amp.autocast():\n            logits = net(x)"
    train = ["loss = train_step(x, y)\nout = snap(loss)"]

    def step(loss, weight):
        return ["ok", [loss, [["w", weight], ["b", [1.0, 2.0]]], [["w", None], ["b", None]]]]
    upstream = [OK, step(0.5, [0.2, -0.4])]
    _, got, counts = be.compare((build, train), [OK, step(0.5001, [0.23, -0.4])], upstream,
                                ut.rule, ut.FUZZER.tol)
    assert got is None and counts["a float16 pre-activation at a ReLU's kink"] == 1
    for mine in [step(0.5001, [0.2 * 16, -0.4 * 16]), step(0.6, [0.23, -0.4])]:
        _, got, _ = be.compare((build, train), [OK, mine], upstream, ut.rule, ut.FUZZER.tol)
        assert got == "step 1: values differ"


def test_float32_rounding_grown_over_steps_is_set_apart_only_after_a_first_strict_step():
    train = "loss = train_step(x, y)\nout = snap(loss)"
    mine, theirs = [OK, ["ok", [0.2]], ["ok", [0.2002]]], [OK, ["ok", [0.2]], ["ok", [0.19995]]]
    _, got, counts = be.compare(("net = 1", [train, train]), mine, theirs, ut.rule, ut.FUZZER.tol)
    assert got is None and counts["float32 rounding grown over steps"] == 1
    _, got, _ = be.compare(("net = 1", [train]), mine[:1] + mine[2:], theirs[:1] + theirs[2:],
                           ut.rule, ut.FUZZER.tol)
    assert got == "step 1: values differ"
    _, got, _ = be.compare(("net = 1", [train, train]), mine[:2] + [["ok", [0.21]]], theirs,
                           ut.rule, ut.FUZZER.tol)
    assert got == "step 2: values differ"
