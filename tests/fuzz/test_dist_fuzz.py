"""CI slice of the distributed fuzzer (`dist.py`; full runs offline, ``python -m tests.fuzz.dist``):
a few drawn collective programs and data-parallel trainings against their oracles, and checks
that the comparisons catch what they must."""
import collections

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.distributed.is_available():
    pytest.skip("this torch build has no torch.distributed", allow_module_level=True)

import megengine as mge  # noqa: E402
import megengine.distributed as megengine_dist  # noqa: E402
import megengine.functional as F  # noqa: E402
import megengine.functional.distributed as fd  # noqa: E402
from megengine.autodiff import GradManager  # noqa: E402

from . import dist  # noqa: E402

# programs on 2 and 4 ranks, together holding differentiated collectives of every kind, one
# collective applied to another's output, sub-groups, 0-d, empty and strided inputs, dummy
# inputs off the root, bad calls, collectives called through dist.functional and
# collective_comm, batched exchanges around rings and sync_batch_norm over groups of 1, 2 and 4
# ranks (test_draws_cover_the_distributed_api: the first 100)
PROGRAMS = (5, 7, 10, 13, 36)


@pytest.mark.parametrize("seed", PROGRAMS)
def test_drawn_collective_programs_match_numpy(seed):
    dist.check_program(seed)  # raises DistMismatch naming the step, rank and difference


def test_ranks_giving_differently_sized_inputs_fail_instead_of_hanging():
    dist.check_program(10, mismatch=True)  # an all_gather (gloo aborts the receiving rank)


# a rank's own mean loss with "mean"; an uneven last batch, Adam, "sum"; a traced CNN (all three
# with SyncBatchNorm); two backward passes per step; ranks 2 and 0 of 3 (SyncBatchNorm over them)
@pytest.mark.parametrize("seed", (0, 3, 4, 6, 20))
def test_drawn_networks_train_data_parallel_like_one_process_on_the_whole_batch(seed):
    dist.check_training(seed)


def test_the_adam_tolerance_covers_the_step_of_a_zero_gradients_rounding():
    # seed 70418 (float64, Adam): the bias of the conv before a SyncBatchNorm has a zero
    # gradient in exact arithmetic; its rounding in one process, scaled by Adam's first step
    # to lr * g / eps, moved that bias (and the norm's running mean) by more than float64's
    # plain atol, and the ranks round differently
    plan = dist.draw_training(70418)
    assert plan["opt"] == "adam" and plan["layers"][3:5] == [("conv", 3, 4, 2), ("syncbn", 4)]
    net = dist.Net(plan)  # (one process: BatchNorm2d for the SyncBatchNorm)
    dist._set_state(net, dist._initial_state(plan, 70418))
    net.train()
    x, y = (mge.tensor(a, dtype="float64") for a in dist._data(plan, 70418, 0))
    gm = GradManager().attach(net.parameters())
    with gm:
        gm.backward(F.mean((net(x) - y) ** 2))
    noise = abs(net.layers[3].bias.grad.numpy()).max()
    step = dist.ADAM_LR * noise / dist.ADAM_EPS  # (Adam's first step for |g| << eps)
    rtol, atol = dist._train_tolerance(plan)
    assert 0 < noise < 1e-12 and step * plan["steps"] < atol


def test_the_sync_bn_oracle_allows_its_own_rounding_of_a_zero_gradient():
    # seed 90201, step 8: float64, two values per channel (x near 1, std near 0.01), so the
    # input's gradient is exactly zero; the float64 reference rounds it to 3.4e-12 (x - mean
    # keeps ulps of |x|, 100 times the deviation's), and a rank, rounding otherwise, may differ
    # from it by as much
    _, groups, steps = dist.draw_program(90201)
    step = steps[8]
    assert step["op"] == "sync_bn" and step["dtype"] == "float64" and sum(step["batches"]) == 2
    for (_, grads), (_, grad_slack) in dist.expected_sync_bn(90201, 8, step, groups[0]).values():
        if grads[0].size:
            assert 1e-12 < np.abs(grads[0]).max() < 3 * grad_slack[0]


def test_a_wrong_adjoint_is_caught(monkeypatch):
    # all_reduce_sum's backward handing back the rank's own output gradient (not their sum);
    # the launcher forks, so the patch reaches the ranks
    monkeypatch.setattr(fd.AllReduce, "backward", lambda self, g: g)
    with pytest.raises(dist.DistMismatch, match="input gradient"):
        dist.check_program(8)  # (differentiates all_reduce_sum on 4 ranks)


def test_a_sync_batch_norm_on_local_statistics_is_caught(monkeypatch):
    def local(inp, running_mean, running_var, weight, bias, training, momentum, eps, eps_mode,
              group):
        return F.nn.batch_norm(inp, running_mean, running_var, weight, bias, training=training,
                               momentum=momentum, eps=eps)

    monkeypatch.setattr(F.nn, "sync_batch_norm", local)
    with pytest.raises(dist.DistMismatch, match=r"\(sync_bn\) rank \d output"):
        dist.check_program(20)  # (sync_batch_norm over WORLD, 2 ranks)


def test_ranks_that_skip_the_gradient_all_reduce_are_caught(monkeypatch):
    monkeypatch.setattr(megengine_dist, "make_allreduce_cb",
                        lambda *args, **kwargs: lambda param, grad: grad)
    with pytest.raises(dist.DistMismatch, match="step 0 rank 0"):
        dist.check_training(4)


def test_draws_cover_the_distributed_api():
    seen = collections.Counter()
    for seed in range(100):
        n, groups, steps = dist.draw_program(seed)
        seen[f"world={n}"] += 1
        seen.update(f"group size {len(g)}" for g in groups if len(g) < n)
        for step in steps:
            seen[step["op"] if step["op"] != "error" else step["kind"]] += 1
            seen.update(f"{key}={step.get(key)}" for key in ("dtype", "then", "older", "layout",
                                                             "dummy", "transposed_loss", "call",
                                                             "nested", "eps_mode", "affine"))
            seen[f"group {'subgroup' if isinstance(step['group'], int) else step['group']}"] += 1
            if step.get("grad"):
                seen[f"grad {step['op']}"] += 1
                seen["unused by a member" if "unused_by" in step else ""] += 1
            if "shape" in step:
                seen["0-d" if step["shape"] == () else "empty" if 0 in step["shape"] else ""] += 1
        plan = dist.draw_training(seed)
        seen.update({f"ranks={plan['n']}", f"opt={plan['opt']}", f"method={plan['method']}",
                     f"attach={plan['attach']}", f"train dtype={plan['dtype']}",
                     "uneven" if len(set(plan["batches"][-1])) > 1 else "even",
                     f"trace={plan['trace']}", f"accumulate={plan['accumulate']}",
                     f"mixed={plan['mixed']}", f"backend named={plan['name_backend']}",
                     f"trained by {len(plan['members'])} of {plan['n']}"})
        seen.update(spec[0] for spec in plan["layers"])
    want = {f"world={n}" for n in (2, 3, 4)} | {f"group size {k}" for k in (1, 2, 3)}
    want |= set(dist.OPS) | set(dist.ERRORS) | {f"grad {op}" for op in dist.GRAD_OPS}
    want |= {"dtype=float32", "dtype=float64", "dtype=int32", "dtype=float16", "dtype=int8",
             "dtype=uint8", "dtype=int64", "dtype=bool", "then=all_reduce_sum",
             "then=all_gather", "older=True", "group world", "group perm", "group subgroup",
             "0-d", "empty", "ranks=2", "ranks=3", "opt=sgd", "opt=sgd_momentum", "opt=adam",
             "method=mean", "method=sum", "attach=1", "attach=3", "train dtype=float32",
             "train dtype=float64", "uneven", "even", "conv", "syncbn", "syncbn1d", "frozen_bn",
             "linear", "layout=transposed", "layout=strided", "dummy=True",
             "transposed_loss=True", "trace=None", "trace=False", "trace=True",
             "accumulate=True", "trained by 2 of 3", "unused by a member", "mixed=True",
             "call=dist.functional", "call=collective_comm", "exchange", "nested=True",
             "grad exchange", "sync_bn", "grad sync_bn", "eps_mode=max", "affine=False",
             "backend named=True"}
    assert want <= set(seen), want - set(seen)
