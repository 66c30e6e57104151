"""CI slice of the distributed fuzzer (`dist.py`; full runs offline, ``python -m tests.fuzz.dist``):
a few drawn collective programs and data-parallel trainings against their oracles, and checks
that the comparisons catch what they must."""
import collections

import pytest

torch = pytest.importorskip("torch")
if not torch.distributed.is_available():
    pytest.skip("this torch build has no torch.distributed", allow_module_level=True)

import megengine.distributed as megengine_dist  # noqa: E402
import megengine.functional.distributed as fd  # noqa: E402

from . import dist  # noqa: E402

# programs with differentiated scatter and remote_send (1), collectives on sub-groups of one
# and two ranks, 0-d, and bad calls (5), all_to_all then all_gather differentiated (7);
# test_draws_cover_the_distributed_api says what the first 100 reach
PROGRAMS = (1, 5, 7)


@pytest.mark.parametrize("seed", PROGRAMS)
def test_drawn_collective_programs_match_numpy(seed):
    dist.check_program(seed)  # raises DistMismatch naming the step, rank and difference


def test_ranks_giving_differently_sized_inputs_fail_instead_of_hanging():
    dist.check_program(0, mismatch=True)


# a rank's own mean loss with "mean"; an uneven last batch, Adam, "sum"; a CNN; all SyncBatchNorm
@pytest.mark.parametrize("seed", (0, 3, 4))
def test_drawn_networks_train_data_parallel_like_one_process_on_the_whole_batch(seed):
    dist.check_training(seed)


def test_a_wrong_adjoint_is_caught(monkeypatch):
    # all_reduce_sum's backward handing back the rank's own output gradient (not their sum);
    # the launcher forks, so the patch reaches the ranks
    monkeypatch.setattr(fd.AllReduce, "backward", lambda self, g: g)
    seed = next(s for s in range(100) if any(
        st.get("grad") and "all_reduce_sum" in (st["op"], st.get("then"))
        for st in dist.draw_program(s)[2]))
    with pytest.raises(dist.DistMismatch, match="input gradient"):
        dist.check_program(seed)


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
            seen.update(f"{key}={step.get(key)}" for key in ("dtype", "then", "older"))
            seen[f"group {'subgroup' if isinstance(step['group'], int) else step['group']}"] += 1
            if step.get("grad"):
                seen[f"grad {step['op']}"] += 1
            if "shape" in step:
                seen["0-d" if step["shape"] == () else "empty" if 0 in step["shape"] else ""] += 1
        plan = dist.draw_training(seed)
        seen.update({f"ranks={plan['n']}", f"opt={plan['opt']}", f"method={plan['method']}",
                     f"attach={plan['attach']}", f"train dtype={plan['dtype']}",
                     "uneven" if len(set(plan["batches"][-1])) > 1 else "even"})
        seen.update(spec[0] for spec in plan["layers"])
    want = {f"world={n}" for n in (2, 3, 4)} | {f"group size {k}" for k in (1, 2, 3)}
    want |= set(dist.OPS) | set(dist.ERRORS) | {f"grad {op}" for op in dist.GRAD_OPS}
    want |= {"dtype=float32", "dtype=float64", "dtype=int32", "then=all_reduce_sum",
             "then=all_gather", "older=True", "group world", "group perm", "group subgroup",
             "0-d", "empty", "ranks=2", "ranks=3", "opt=sgd", "opt=sgd_momentum", "opt=adam",
             "method=mean", "method=sum", "attach=1", "attach=3", "train dtype=float32",
             "train dtype=float64", "uneven", "even", "conv", "syncbn", "syncbn1d", "frozen_bn",
             "linear"}
    assert want <= set(seen), want - set(seen)
