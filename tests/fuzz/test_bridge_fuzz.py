"""CI slice of the bridge fuzzer (`bridge.py`; full runs offline, ``python -m tests.fuzz.bridge``):
a few drawn hybrid networks trained against pure torch, and checks that the comparison catches
what it must."""
import numpy as np
import pytest
import torch

from . import bridge


@pytest.mark.parametrize("seed", range(6))
def test_drawn_networks_train_like_pure_torch(seed):
    bridge.check(seed)  # raises BridgeMismatch naming the first differing loss or tensor


def test_draws_cover_the_bridge_features():
    # the first 60 plans reach every block kind and option the fuzzer knows
    kinds, options = set(), set()
    for seed in range(60):
        blocks, wrappers, lins, stages, opts = bridge.draw(seed)
        kinds |= {kind for kind, _ in blocks}
        kinds |= {stage[0] for stage in stages}
        if len(set(wrappers)) < len(wrappers):
            kinds.add("one block, two wrappers")
        calls = [stage[1] for stage in stages if stage[0] == "call"]
        if len(set(calls)) < len(calls):
            kinds.add("one wrapper called twice")
        options |= {f"{k}={v}" for k, v in opts.items() if k in ("opt", "trace", "midway")}
    assert kinds >= {"mlp", "bn", "ln", "tied", "frozen", "two_out", "transposed", "packed",
                     "reverse", "mge", "mge_param", "one block, two wrappers",
                     "one wrapper called twice"}
    assert options >= {"opt=sgd", "opt=sgd_nesterov", "opt=adam", "opt=adamw", "trace=none",
                       "trace=eager", "trace=symbolic", "midway=save", "midway=deepcopy"}


def test_a_wrong_update_on_the_torch_side_is_caught(monkeypatch):
    # a bridge whose update missed or doubled a torch parameter must be found: here the first
    # wrapped parameter of the hybrid gets an extra nudge of 1e-3 after every step
    seed = next(s for s in range(100) if bridge.draw(s)[4]["midway"] == "none")
    real = bridge._mge_step

    def nudged(net, make_opt, opts):
        step, opt = real(net, make_opt, opts)

        def run(x, y):
            loss = step(x, y)
            with torch.no_grad():
                next(iter(net.wraps[0].torch_module.parameters())).add_(1e-3)
            return loss

        return run, opt

    monkeypatch.setattr(bridge, "_mge_step", nudged)
    with pytest.raises(bridge.BridgeMismatch, match="wrapper 0"):
        bridge.check(seed)


def test_a_wrong_loss_is_caught(monkeypatch):
    real = bridge._compare

    def compare(what, got, want):
        if what == "step 0 loss":
            got = np.asarray(got) * (1 + 1e-6)
        real(what, got, want)

    monkeypatch.setattr(bridge, "_compare", compare)
    with pytest.raises(bridge.BridgeMismatch, match="step 0 loss"):
        bridge.check(0)
