"""CI slice of the bridge fuzzer (`bridge.py`; full runs offline, ``python -m tests.fuzz.bridge``):
a few drawn hybrid networks trained against pure torch, one trained data-parallel, a few
differentiated to the second and third order, and checks that the comparison catches what it
must."""
import numpy as np
import pytest
import torch
from devices import skip_if_forked_torch_autograd_fails

from megengine import amp

from . import bridge


@pytest.mark.parametrize("seed", range(8))
def test_drawn_networks_train_like_pure_torch(seed):
    bridge.check(seed)  # raises BridgeMismatch naming the first differing loss or tensor


@pytest.mark.parametrize("seed, order", [(0, 2), (3, 3), (12, 3), (30, 3)])
def test_drawn_networks_differentiate_to_higher_orders_like_pure_torch(seed, order):
    # 12 and 30 hold a tied block whose weight a megengine layer uses too (the wrapper lists it
    # as dec.weight, torch as enc.weight)
    bridge.check_higher_order(seed, order)


def test_a_wrong_higher_order_gradient_through_a_wrapper_is_caught(monkeypatch):
    from megengine.module.pytorch import _higher_order

    real = _higher_order.TorchGrad.backward
    monkeypatch.setattr(_higher_order.TorchGrad, "backward", lambda self, *ggs: tuple(
        None if g is None else g * 1.0001 for g in real(self, *ggs)))
    with pytest.raises(bridge.BridgeMismatch, match="order 3 gradient of"):
        bridge.check_higher_order(30, 3)  # (no batch norm: torch 2.14 has its third order too)


def test_a_third_order_gradient_that_only_one_side_refuses_is_caught(monkeypatch):
    # where torch has no derivative of that order (torch 2.14's batch norm, in seed 3), both
    # sides refuse and nothing is compared; the wrapper refusing alone is a finding
    from megengine.module.pytorch import _higher_order

    def refuse(call, ys, order):
        raise RuntimeError(f"{call!r}: a third-order gradient through this module passes ...")

    monkeypatch.setattr(_higher_order, "_refuse_once_differentiable", refuse)
    with pytest.raises(bridge.BridgeMismatch, match="megengine refused"):
        bridge.check_higher_order(30, 3)


@pytest.mark.parametrize("seed", [31130, 122447])
def test_a_diverging_network_is_compared_until_its_twin_diverges(seed):
    # network 31130's loss grows to 4e25 on both sides alike, then the twin steps into nan
    # where megengine's GradScaler skips the step; 122447's parameters stray 2% from the
    # float64 twin's on both sides by step 8 and its step 9 losses (5e30) were 2.2e-4 apart:
    # the comparison stops once the twin's loss is 1e6 times its first (`bridge._diverged`)
    with np.errstate(over="ignore", invalid="ignore"):
        bridge.check(seed)
    assert bridge._diverged([3e6], 1.0) and not bridge._diverged([1.5e6], 1.0)  # (1e6 * (1 + 1))


def test_an_embedding_under_autocast_takes_fixed_rows():
    # its indices computed from float16 activations flipped with a last-bit difference
    # (networks 102005, 102822 failed so): under autocast they are fixed rows
    for seed in (102005, 102822):
        stages, opts = bridge.draw(seed)[3:]
        assert opts["autocast"] and ("call", 1 if seed == 102005 else 3, "embed",
                                     3 if seed == 102005 else 10, "fixed_rows") in stages
        bridge.check(seed)


def test_a_drawn_network_trains_data_parallel_like_one_process_on_both_batches():
    if not torch.distributed.is_available():
        pytest.skip("this torch build has no torch.distributed")
    skip_if_forked_torch_autograd_fails()
    bridge.check_dp(0)


def test_ranks_that_skip_the_gradient_all_reduce_are_caught(monkeypatch):
    # each rank then steps on its own half's gradient (the launcher forks: the patch reaches it)
    if not torch.distributed.is_available():
        pytest.skip("this torch build has no torch.distributed")
    skip_if_forked_torch_autograd_fails()
    real = bridge._mge_step
    monkeypatch.setattr(bridge, "_mge_step",
                        lambda net, make_opt, plan, callbacks=(): real(net, make_opt, plan))
    with pytest.raises(bridge.BridgeMismatch, match="data-parallel rank"):
        bridge.check_dp(0)


def test_a_step_the_gradscaler_skips_is_skipped_by_the_twin(monkeypatch):
    # network 116780 failed so: under autocast, each rank's float16 gradient (twice the whole
    # batch's per sample) overflowed at scale 32768 and megengine's GradScaler skipped step 9,
    # which the twin, without a scaler, took; the twin's own scaled gradients overflow there too
    if not torch.distributed.is_available():
        pytest.skip("this torch build has no torch.distributed")
    skip_if_forked_torch_autograd_fails()
    seen = []
    real = bridge._skipped
    monkeypatch.setattr(bridge, "_skipped", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    bridge.check_dp(116780)
    assert seen.index(True) == 9 and seen.count(True) == 1


@pytest.mark.parametrize("seed", [136, 62])  # under autocast, and a float32 network
def test_a_skip_where_the_twins_scaled_gradients_are_finite_is_caught(seed, monkeypatch):
    opts = bridge.draw(seed)[4]
    assert opts["scaler"] and opts["autocast"] == (seed == 136)
    monkeypatch.setattr(bridge._Step, "skipped", lambda self: True)
    with pytest.raises(bridge.BridgeMismatch, match="step 0: the GradScaler found inf/nan "
                       f"gradients at scale {opts['scaler']}.*finite"):
        bridge.check(seed)


def test_draws_cover_the_bridge_features():
    # the first 100 plans reach every block kind and option the fuzzer knows
    kinds, options = set(), set()
    for seed in range(100):
        blocks, wrappers, lins, stages, opts = bridge.draw(seed)
        kinds |= {kind for kind, _ in blocks}
        kinds |= {stage[0] for stage in stages}
        kinds |= {f"conv {stage[3]}" for stage in stages if stage[2:3] == ("conv",)}
        kinds |= {f"conv pool={args[3]} bn={args[2]}" for kind, args in blocks if kind == "conv"}
        kinds |= {"mge conv" for lin in lins if len(lin) == 3}
        kinds |= {f"{args[2]} layers={args[3]} bidirectional={args[4]}" for kind, args in blocks
                  if kind == "recurrent"}
        kinds |= {f"encoder norm_first={args[2]}" for kind, args in blocks if kind == "encoder"}
        if len(set(wrappers)) < len(wrappers):
            kinds.add("one block, two wrappers")
        calls = [stage[1] for stage in stages if stage[0] == "call"]
        if len(set(calls)) < len(calls):
            kinds.add("one wrapper called twice")
        options |= {f"{k}={v}" for k, v in opts.items() if k in ("opt", "trace", "midway",
                                                                  "dtype", "accumulate", "dp",
                                                                  "autocast")}
        options |= {k for k in ("unattached", "eval_step", "lr_step") if opts[k] is not None}
        options |= {"scaler"} if opts["scaler"] else set()
    assert kinds >= {"mlp", "bn", "ln", "tied", "frozen", "two_out", "transposed", "packed",
                     "embed", "masked", "modal", "conv", "reverse", "mge", "mge_param",
                     "mge_pool", "flatten", "mge conv", "conv nchw", "conv channels_last",
                     "conv nhwc", "conv pool=max bn=True", "conv pool=avg bn=False",
                     "one block, two wrappers", "one wrapper called twice", "recurrent",
                     "LSTM layers=1 bidirectional=True", "LSTM layers=2 bidirectional=False",
                     "GRU layers=2 bidirectional=True", "GRU layers=1 bidirectional=False",
                     "encoder norm_first=True", "encoder norm_first=False"}
    assert options >= {"opt=sgd", "opt=sgd_nesterov", "opt=adam", "opt=adamw", "trace=none",
                       "trace=eager", "trace=symbolic", "midway=save", "midway=deepcopy",
                       "dtype=float32", "dtype=float64", "accumulate=True", "dp=True",
                       "autocast=True", "unattached", "eval_step", "lr_step", "scaler"}


def test_autocast_networks_pool_by_average():
    # a float16 max pool's ties flip with last-bit input differences (`bridge.draw`): network
    # 33641, an autocast network whose conv block max-pooled, trained 1.4e-2 away from its twin
    pools = {"max": 0, "avg": 0}
    for seed in range(300):
        blocks, _, _, stages, opts = bridge.draw(seed)
        if opts["autocast"]:
            for kind, args in blocks:
                if kind == "conv" and args[3]:
                    pools[args[3]] += 1
            assert ("mge_pool",) not in stages, seed
    assert pools["max"] == 0 and pools["avg"] > 0, pools
    bridge.check(33641)


def test_autocast_networks_recur_by_gru():
    # torch's CPU LSTM has no float16 kernel under torch.autocast, pure torch raising alike
    # (network 124107, whose LSTM block became a GRU): under autocast the recurrent blocks are
    # GRUs, elsewhere either
    cells = {True: set(), False: set()}
    for seed in range(124000, 124300):
        blocks, _, _, _, opts = bridge.draw(seed)
        cells[opts["autocast"]] |= {args[2] for kind, args in blocks if kind == "recurrent"}
    assert cells == {True: {"GRU"}, False: {"GRU", "LSTM"}}, cells
    bridge.check(124107)


def test_autocast_networks_allow_the_float16_rounding_they_amplify():
    # networks 115501 (batch norm of six samples) and 113677 (LayerNorm of 3 and 5 features)
    # in float16 took the sides apart past the fixed tolerance, each as near its float64 twin
    # as the other: the float16 twin's distance from float64 is now allowed twice (`_compare`)
    for seed in (115501, 113677):
        assert bridge.draw(seed)[4]["autocast"]
        bridge.check(seed)


def _seed(**want):
    return next(s for s in range(300)
                if all(bridge.draw(s)[4][k] == v for k, v in want.items()))


def _nudge_after_each_step(monkeypatch, amount):
    """The first wrapped parameter of the hybrid gets an extra ``amount`` after every step: a
    bridge whose update missed or doubled a torch parameter, which the check must find."""
    real = bridge._mge_step

    def nudged(net, make_opt, plan):
        step, opt = real(net, make_opt, plan)
        inner = step._step

        def run(*batches):
            losses = inner(*batches)
            with torch.no_grad():
                next(iter(net.wraps[0].torch_module.parameters())).add_(amount)
            return losses

        step._step = run
        return step, opt

    monkeypatch.setattr(bridge, "_mge_step", nudged)


def test_a_wrong_update_under_autocast_is_caught(monkeypatch):
    # the float16 slack leaves a lost or doubled update visible: a nudge of 1e-2 a step (an
    # SGD step of lr 0.05 on a gradient of 0.2)
    seed = _seed(autocast=True, midway="none")
    bridge.check(seed)
    _nudge_after_each_step(monkeypatch, 1e-2)
    with pytest.raises(bridge.BridgeMismatch, match="wrapper 0"):
        bridge.check(seed)


def test_a_wrong_update_on_the_torch_side_is_caught(monkeypatch):
    _nudge_after_each_step(monkeypatch, 1e-3)
    with pytest.raises(bridge.BridgeMismatch, match="wrapper 0"):
        bridge.check(_seed(midway="none"))


def test_a_wrong_loss_is_caught(monkeypatch):
    real = bridge._compare

    def compare(what, got, want, *args):
        if what == "step 0 loss":
            got = np.asarray(got) * (1 + 1e-6)
        real(what, got, want, *args)

    monkeypatch.setattr(bridge, "_compare", compare)
    with pytest.raises(bridge.BridgeMismatch, match="step 0 loss"):
        bridge.check(1)


def test_an_update_of_an_unattached_parameter_is_caught(monkeypatch):
    # attaching every parameter trains the block the plan leaves unattached
    seed = _seed(midway="none", dp=False)
    seed = next(s for s in range(seed, 300) if bridge.draw(s)[4]["unattached"] is not None
                and bridge.draw(s)[4]["midway"] == "none")
    monkeypatch.setattr(bridge, "_attached", lambda net, wrappers, opts: list(net.parameters()))
    with pytest.raises(bridge.BridgeMismatch, match="wrapper"):
        bridge.check(seed)


def test_a_changed_non_persistent_buffer_is_caught(monkeypatch):
    seed = next(s for s in range(300) if any(k == "masked" for k, _ in bridge.draw(s)[0]))
    real = bridge.build

    def build(seed):
        net, twin, plan = real(seed)
        wrap = next(w for w in net.wraps if hasattr(w.torch_module, "mask"))
        wrap.torch_module.mask[0] += 0.5
        return net, twin, plan

    monkeypatch.setattr(bridge, "build", build)
    with pytest.raises(bridge.BridgeMismatch, match="mask"):
        bridge.check(seed)


def test_a_loss_scale_left_in_the_gradients_is_caught(monkeypatch):
    # (with SGD and no clipping: Adam's steps and a clipped gradient hardly see a scale)
    seed = next(s for s in range(300) if bridge.draw(s)[4]["scaler"]
                and bridge.draw(s)[4]["opt"] == "sgd" and not bridge.draw(s)[4]["clip"])
    monkeypatch.setattr(amp.GradScaler, "unscale", lambda self, tensors: self)
    with pytest.raises(bridge.BridgeMismatch):
        bridge.check(seed)


def test_a_torch_block_left_out_of_autocast_is_caught(monkeypatch):
    # a wrapper that ran its torch module outside torch.autocast: values stay within the
    # float16 tolerance, the block's output dtype does not
    import contextlib

    from megengine.core import amp as amp_state

    seed = next(s for s in range(300) if bridge.draw(s)[4]["autocast"])
    bridge.check(seed)
    monkeypatch.setattr(amp_state, "torch_autocast", lambda device_type: contextlib.nullcontext())
    with pytest.raises(bridge.BridgeMismatch, match="output dtype|returned"):
        bridge.check(seed)
