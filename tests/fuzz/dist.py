"""Offline fuzzing of megengine.distributed: ``python -m tests.fuzz.dist --seeds 100 [--start S]``
draws, per seed, a program of collectives and a data-parallel training run, runs each on CPU
ranks under `dist.launcher` (fork, gloo) and checks them against oracles computed in this
process; the CI slice is `test_dist_fuzz.py`. Run it from the repository root with the checkout
on PYTHONPATH.

Collectives (`draw_program`, 2-4 ranks): a random sequence of ``F.distributed`` ops
(all_reduce_sum/max/min, all_gather, reduce_scatter_sum, broadcast, reduce_sum, gather, scatter,
all_to_all, remote_send/remote_recv in upstream's newer and older forms) on float32, float64 and
int32 inputs, sometimes float16, int8, uint8, int64 or bool, of random shapes (0-d and empty where
the op allows them; some transposed or strided views), over WORLD, over groups made by
``dist.new_group`` (any subset, any order: the first rank is the root) and over a permuted list of
all ranks; called as ``F.distributed.op(x, group)``, ``dist.functional.op(x, group=...)`` or
``collective_comm(x, CollectiveComm.Mode.OP, group, None)``. After them (drawn from their own
stream): batched exchanges (each member of a ring of ranks sends to the next and receives from the
one before, every send posted between ``dist.group_start()`` and ``dist.group_end()``, maybe nested,
before any receive; differentiated, the backward pass batched too) and ``F.nn.sync_batch_norm`` over
a group whose members' batches differ in size (eps_mode additive or max, with or without affine
parameters, maybe differentiated), against a float64 batch norm of the concatenated batches through
torch's autograd in this process. Every rank's ``dist.backend`` must say "gloo". Each rank's input
is drawn from (seed, step, rank), so this process computes every rank's expected output with numpy;
where the result is everywhere the same it must be bitwise so (upstream's promise). The non-roots of
broadcast and scatter may pass a dummy of another shape and dtype (upstream takes both from the
root). Float steps may also be differentiated: each rank's loss is ``(out * w).sum()`` with its own
``w`` (possibly through a transpose, so that the gradient arrives strided; one member's loss may
leave the output out and call ``gm.backward()`` without one), and the input's gradient from
``GradManager.backward`` is checked against the hand-derived adjoint collective (all_reduce_sum of
the ``w``s, the root's ``w`` split for gather, for a max or min the sum to the ranks holding the
result, as the fork documents), also through a second collective applied to the first one's output.
Between them come bad calls that every rank can tell are wrong on its own (a non-member calling a
group's collective, a list of some ranks that is not a group, a shape that does not split, an axis
out of range, a bad peer or reduce method, a bad new_group, and from a stream of their own
new_group([]), bcast_list_ of one tensor, a rank out of range in make_allreduce_cb's or
pack_allreduce_split's group, a shape of the wrong size): each must raise its error, and the
collectives after it must still work. Every ``MISMATCH_EVERY``-th seed also runs a program whose
ranks give differently sized inputs to one collective (upstream requires equal shapes and checks
nothing; neither rank can tell alone): it must fail with `WorkerError`/`TimeoutError` within its
timeouts, not hang and not return.

Training (`draw_training`, 2-3 ranks): a small network of Linear, Conv2d, SyncBatchNorm (plain
BatchNorm in the oracle) and a frozen BatchNorm, in float64 (float32 with SGD; or float64 with a
float32 last layer, so that the gradients fill a bucket of each dtype), trained by all ranks or by a
group of two of three, started from different weights on every rank and made equal with
``dist.bcast_list_``; ``make_allreduce_cb("mean" or "sum")`` (maybe naming ``backend=dist.backend``)
with random bucket sizes over one or several ``attach`` calls, one callback shared or one each; SGD
(momentum, weight decay) or Adam; a few steps, maybe under ``jit.trace`` (symbolic or not) or with
two backward passes each (gradients accumulated), whose per-rank batches may be uneven at the end
(the loss is then scaled so that the reduced gradient is the whole batch's mean). The oracle is the
same network trained in this process on the concatenated batches with a mean loss: after every step
each rank's parameters and buffers match it, all ranks hold identical bytes, and the ranks' losses
together are its loss; at the end, so are the eval-mode outputs. (A float32 rank may be off the one
process by twice the one process's own error against the same training in float64:
`_compare_training`.)

A seed's failures are printed with its plan; ``--only collectives|training`` runs one half."""
import argparse
import faulthandler
import sys
import time

import numpy as np

import megengine as mge
import megengine.distributed as dist
import megengine.functional as F
import megengine.module as M
import megengine.optimizer as optim
from megengine.autodiff import GradManager
from megengine.core.ops.builtin import CollectiveComm
from megengine.distributed.helper import pack_allreduce_split
from megengine.jit import trace

FD = F.distributed
MISMATCH_EVERY = 10
TIMEOUT = 240  # seconds for one launch: only a hang comes near it
COLLECTIVE_TIMEOUT = 60  # seconds a rank waits in a collective for its peers
TOLERANCES = {"float16": (1e-2, 1e-2), "float32": (1e-5, 1e-6), "float64": (1e-12, 1e-13)}
TRAIN_TOLERANCES = {"float32": (1e-4, 1e-6), "float64": (1e-9, 1e-12)}
ADAM_LR, ADAM_EPS = 0.01, 1e-4  # (see `_optimizer` and `_train_tolerance`)


class DistMismatch(AssertionError):
    pass


def _launch(func, n, *args, collective_timeout=COLLECTIVE_TIMEOUT):
    return dist.launcher(func, n_gpus=n, device_type="cpu", timeout=TIMEOUT,
                         collective_timeout=collective_timeout)(*args)


def _compare(what, got, want, tolerance):
    rtol, atol = tolerance
    got = np.asarray(got)
    if got.shape != want.shape or got.dtype != want.dtype:
        raise DistMismatch(f"{what}: got {got.dtype}{got.shape}, want {want.dtype}{want.shape}")
    if not np.allclose(got, want, rtol=rtol, atol=atol):
        err = np.abs(got.astype(np.float64) - want).max()
        raise DistMismatch(f"{what}: max abs difference {err:.3g}\n got {got}\nwant {want}")


# ----- collectives: drawing a program -----

SPLIT_OPS = ("reduce_scatter_sum", "scatter", "all_to_all")  # an axis must split into n parts
ND_OPS = ("all_gather", "gather") + SPLIT_OPS  # no 0-d input
GRAD_OPS = ("all_reduce_sum", "all_reduce_max", "all_reduce_min", "all_gather",
            "reduce_scatter_sum", "broadcast", "reduce_sum", "gather", "scatter", "all_to_all",
            "remote")
OPS = ("all_reduce_sum", "all_reduce_max", "all_reduce_min") + ND_OPS + ("broadcast",
                                                                          "reduce_sum", "remote")
SAME_EVERYWHERE = ("all_reduce_sum", "all_reduce_max", "all_reduce_min", "all_gather", "broadcast")
# differentiated steps may apply a second collective (`then`) to the output of one of these
CHAIN_FIRST = ("all_reduce_sum", "all_gather", "reduce_scatter_sum", "broadcast", "scatter",
               "all_to_all")
ERRORS = ("non_member", "undeclared_group", "no_split", "bad_axis", "bad_peer", "reduce_method",
          "bad_new_group", "bad_dtype", "unsendable_root")


def draw_program(seed, mismatch=False):
    """(world size, groups, steps): ``groups`` are the rank lists every rank passes to
    new_group first; a step is a dict naming its op, group ("world", a group's index or "perm":
    a permuted list of all ranks), shape, dtype, axes, whether it is differentiated; error steps
    have op "error". ``mismatch``: one step whose ranks' shapes differ, last."""
    rng = np.random.default_rng([seed, 1])
    n = int(rng.integers(2, 5))
    groups = []
    for _ in range(int(rng.integers(0, 3))):
        size = int(rng.integers(1, n + 1))
        groups.append([int(r) for r in rng.permutation(n)[:size]])
    steps = []
    for i in range(int(rng.integers(3, 9))):
        if rng.random() < 0.2:
            steps.append(_draw_error(rng, n, groups))
            continue
        op = str(rng.choice(OPS))
        step = dict(op=op, dtype=str(rng.choice(["float32", "float64", "int32"])))
        other = np.random.default_rng([seed, 8, i])  # (the other draws stay as they were)
        if other.random() < 0.15:  # the other dtypes that cross the wire
            step["dtype"] = str(other.choice(["float16", "int8", "uint8", "int64", "bool"]))
        if op == "remote":
            src, dst = (int(r) for r in rng.permutation(n)[:2])
            step.update(src=src, dst=dst, older=bool(rng.random() < 0.3), group="world")
            members = [src, dst]
        else:
            kinds = ["world", "world", "perm"] + list(range(len(groups)))
            step["group"] = kinds[int(rng.integers(len(kinds)))]
            members = _members(step["group"], n, groups, seed, i)
        ndim = int(rng.integers(1 if op in ND_OPS else 0, 4))
        shape = [int(d) for d in rng.integers(1, 4, ndim)]
        if ndim and rng.random() < 0.1:
            shape[int(rng.integers(ndim))] = 0  # an empty tensor
        if op in SPLIT_OPS:
            axis = int(rng.integers(ndim))
            shape[axis] = len(members) * int(rng.integers(0 if rng.random() < 0.1 else 1, 3))
            step["axis"] = axis
            if op == "all_to_all":
                step["concat_axis"] = int(rng.integers(ndim))
        elif op in ND_OPS:
            step["axis"] = int(rng.integers(-ndim, ndim))
        step["shape"] = tuple(shape)
        step["grad"] = step["dtype"].startswith("float") and op in GRAD_OPS and \
            bool(rng.random() < 0.5)
        if step["grad"] and op in CHAIN_FIRST and rng.random() < 0.3:
            step["then"] = str(rng.choice(["all_reduce_sum", "all_gather"])) if ndim else \
                "all_reduce_sum"  # (all_gather needs a dim)
        if op in ("broadcast", "scatter") and rng.random() < 0.5:
            step["dummy"] = True  # the other members' inputs only say the device (upstream's)
        if step["grad"]:
            step["transposed_loss"] = bool(rng.random() < 0.3)  # a non-contiguous gradient
            if other.random() < 0.2:  # one member's loss leaves the output out
                step["unused_by"] = int(other.choice(members))
        elif ndim and rng.random() < 0.3:
            step["layout"] = "transposed" if ndim > 1 and rng.random() < 0.5 else "strided"
        if op != "remote" and other.random() < 0.4:  # upstream's other spellings of the call
            step["call"] = str(other.choice(["dist.functional", "collective_comm"]))
        steps.append(step)
    steps += _draw_newer_steps(seed, n, groups, len(steps))
    steps += _draw_helper_errors(seed, len(steps))
    if mismatch:
        op = str(rng.choice(["all_reduce_sum", "all_gather", "reduce_scatter_sum"]))
        steps.append(dict(op=op, dtype="float32", group="world", shape=(n,), axis=0,
                          grad=False, mismatch=True))
    return n, groups, steps


HELPER_ERRORS = ("empty_new_group", "bcast_one_tensor", "cb_rank_out_of_range",
                 "pack_wrong_size", "pack_rank_out_of_range")


def _draw_helper_errors(seed, first):
    """Bad calls of the helpers, drawn after the steps above from their own stream (so that
    those stay as they were): new_group([]), bcast_list_ given one tensor, a rank out of range
    in make_allreduce_cb's or pack_allreduce_split's group, pack_allreduce_split given a shape
    of the wrong size. Every rank tells on its own, before any communication."""
    rng = np.random.default_rng([seed, 14])
    return [dict(op="error", kind=str(rng.choice(HELPER_ERRORS)), group="world")
            for _ in range(first, first + int(rng.integers(0, 2)))]


def _draw_newer_steps(seed, n, groups, first):
    """Steps of the API added after the program's draws above (drawn from their own stream, so
    that those stay as they were), appended as steps ``first``, ...: a batched exchange (each
    member of a ring sends to the next and receives from the one before, all sends posted
    between dist.group_start and dist.group_end before any receive, maybe nested) and
    F.nn.sync_batch_norm over a group, the members' batches of different sizes."""
    rng = np.random.default_rng([seed, 10])
    steps = []
    for i in range(first, first + int(rng.integers(0, 3))):
        dtype = str(rng.choice(["float32", "float64", "int32", "float16", "int8", "uint8",
                                "int64", "bool"]))
        if rng.random() < 0.5:
            size = int(rng.integers(2, n + 1))
            # (differentiated: the gradients go back around the ring, the backward pass also
            # batched; its own stream keeps the draws below as they were)
            grad = dtype.startswith("float") and np.random.default_rng([seed, 12, i]).random() < 0.5
            steps.append(dict(op="exchange", group="world", dtype=dtype, grad=bool(grad),
                              ring=[int(r) for r in rng.permutation(n)[:size]],
                              shape=tuple(int(d) for d in rng.integers(0, 4, rng.integers(4))),
                              nested=bool(rng.random() < 0.3),
                              older=bool(rng.random() < 0.3)))
            continue
        kinds = ["world", "perm"] + list(range(len(groups)))
        group = kinds[int(rng.integers(len(kinds)))]
        members = _members(group, n, groups, seed, i)
        spatial = tuple(int(d) for d in rng.integers(1, 4, rng.integers(0, 3)))
        batches = [int(b) for b in rng.integers(1 if spatial else 0, 4, len(members))]
        if sum(batches) * int(np.prod(spatial)) < 2:  # (one value per channel: refused)
            batches[0] += 2
        steps.append(dict(op="sync_bn", group=group, dtype=str(rng.choice(["float32", "float64"])),
                          grad=bool(rng.random() < 0.6), channels=int(rng.integers(1, 4)),
                          batches=batches, spatial=spatial, affine=bool(rng.random() < 0.7),
                          eps_mode=str(rng.choice(["additive", "max"])),
                          eps=float(rng.choice([1e-5, 0.5])),
                          scale=float(rng.choice([2.0, 0.1])),  # (0.1: var below eps 0.5)
                          momentum=float(rng.choice([0.9, 0.5, 0.0]))))
    return steps


def _draw_error(rng, n, groups):
    kind = str(rng.choice(ERRORS))
    step = dict(op="error", kind=kind, group="world")
    outside = [i for i, g in enumerate(groups) if len(g) < n]
    if kind == "non_member" and outside:
        step["group"] = outside[int(rng.integers(len(outside)))]
    elif kind == "non_member" or kind == "undeclared_group":
        step["kind"] = "undeclared_group"
        size = int(rng.integers(1, n))
        step["ranks"] = [int(r) for r in rng.permutation(n)[:size]]
        if step["ranks"] in groups:  # (a group made by new_group is a valid list)
            step["kind"] = "bad_axis"
    elif kind == "bad_peer":
        step["peer"] = str(rng.choice(["self", "world", "negative"]))
    elif kind == "reduce_method":
        step["method"] = str(rng.choice(["avg", "MAX", "", "prod"]))
    elif kind == "bad_new_group":
        step["ranks"] = [0, n] if rng.random() < 0.5 else [n - 1, 0, n - 1]
    return step


def _members(group, n, groups, seed, i):
    if group == "world":
        return list(range(n))
    if group == "perm":
        return [int(r) for r in np.random.default_rng([seed, 2, i]).permutation(n)]
    return groups[group]


def _input(seed, i, rank, step, root):
    """Rank ``rank``'s input of step ``i`` (a mismatch step gives rank 1 more elements; a
    "dummy" step gives members other than the ``root`` a float32 of one element)."""
    rng = np.random.default_rng([seed, 3, i, rank])
    shape = step["shape"]
    if step.get("dummy") and rank != root:
        return rng.standard_normal(1).astype(np.float32)
    if step.get("mismatch") and rank == 1:  # (still splitting into n parts)
        shape = (shape[0] * 2,) + shape[1:]
    if step["dtype"].startswith("float"):
        return rng.standard_normal(shape).astype(step["dtype"])
    return rng.integers(-50, 50, shape).astype(step["dtype"])  # (int8 sums wrap, as numpy's)


def _weight(seed, i, rank, shape, dtype):
    """Rank ``rank``'s output gradient of step ``i``."""
    return np.random.default_rng([seed, 4, i, rank]).standard_normal(shape).astype(dtype)


# ----- collectives: running a program on the ranks -----

def _call(step, x, group):
    """The step's collective on this rank: its output (None where upstream returns None)."""
    op, call = step["op"], step.get("call")
    if call == "collective_comm" and step.get("axis", 0) in (0, -x.ndim) and \
            step.get("concat_axis", 0) == 0:  # (it has no axis arguments: axis 0)
        return FD.collective_comm(x, getattr(CollectiveComm.Mode, op.upper()), group, None)
    module = dist.functional if call == "dist.functional" else FD
    if op in ("all_reduce_sum", "all_reduce_max", "all_reduce_min", "broadcast", "reduce_sum"):
        return getattr(module, op)(x, group=group)
    if op == "all_to_all":
        return module.all_to_all(x, group=group, split_axis=step["axis"],
                                 concat_axis=step["concat_axis"])
    return getattr(module, op)(x, group=group, axis=step["axis"])


def _remote(step, x, rank):
    if rank == step["src"]:
        return FD.remote_send(x, step["dst"])
    if step["older"]:  # upstream before 1.8: the receiver names shape and dtype
        return FD.remote_recv(step["src"], step["shape"], np.dtype(step["dtype"]))
    return FD.remote_recv(step["src"])


def _laid_out(array, layout):
    """``array`` as a Tensor: contiguous, or a transposed or strided view of one."""
    if layout == "transposed":
        axes = tuple(reversed(range(array.ndim)))
        return F.transpose(mge.tensor(np.ascontiguousarray(array.transpose(axes)),
                                      dtype=array.dtype), axes)
    if layout == "strided":
        return mge.tensor(np.repeat(array, 2, axis=-1), dtype=array.dtype)[..., ::2]
    return mge.tensor(array, dtype=array.dtype)


def _run_step(seed, i, step, rank, group):
    """(output, input gradient) of one collective step on this rank, as numpy (or None)."""
    root = None if step["op"] == "remote" else \
        group.proc_ranks[0] if isinstance(group, dist.Group) else group[0]
    x = _laid_out(_input(seed, i, rank, step, root), step.get("layout"))

    def run():
        if step["op"] == "remote":
            return _remote(step, x, rank)
        out = _call(step, x, group)
        # a second collective on the first one's output
        return _call(_then(step), out, group) if step.get("then") else out

    if not step["grad"]:
        out = run()
        return (None if out is None else out.numpy()), None
    gm = GradManager().attach([x])
    with gm:
        out = run()
        if out is None or rank == step.get("unused_by"):
            gm.backward()  # no loss here: the kept collective's backward runs all the same
        else:
            w = _weight(seed, i, rank, out.shape, step["dtype"])
            if step["transposed_loss"] and out.ndim > 1:
                out_t = F.transpose(out, tuple(reversed(range(out.ndim))))
                gm.backward((out_t * mge.tensor(w.T, dtype=w.dtype)).sum())
            else:
                gm.backward((out * mge.tensor(w, dtype=w.dtype)).sum())
    return (None if out is None else out.numpy()), (None if x.grad is None else x.grad.numpy())


def _run_error(step, rank, n, group):
    """Make the drawn bad call on this rank; returns what it raised (or "no error")."""
    kind = step["kind"]
    x = mge.tensor(np.ones((n + 1, 2), np.float32))
    try:
        if kind == "non_member":
            if rank in group.proc_ranks:
                return None  # the members have nothing wrong to do
            FD.all_reduce_sum(x, group)
        elif kind == "undeclared_group":
            FD.all_reduce_sum(x, step["ranks"])
        elif kind == "no_split":
            FD.reduce_scatter_sum(x, dist.WORLD)
        elif kind == "bad_axis":
            FD.all_gather(x, dist.WORLD, axis=2)
        elif kind == "bad_peer":
            peer = {"self": rank, "world": n, "negative": -1}[step["peer"]]
            FD.remote_send(x, peer)
        elif kind == "reduce_method":
            dist.make_allreduce_cb(step["method"])
        elif kind == "bad_new_group":
            dist.new_group(step["ranks"])
        elif kind == "empty_new_group":
            dist.new_group([])
        elif kind == "bcast_one_tensor":
            dist.bcast_list_(x)
        elif kind == "cb_rank_out_of_range":
            dist.make_allreduce_cb("mean", group=[0, n])
        elif kind == "pack_wrong_size":
            pack_allreduce_split([x, x], [x.shape, (x.size + 1,)], dist.WORLD, "sum")
        elif kind == "pack_rank_out_of_range":
            pack_allreduce_split([x], [x.shape], [n, 0], "mean")
        elif kind == "bad_dtype":  # (torch.distributed has no int16)
            FD.all_gather(x.astype("int16"), dist.WORLD)
        elif kind == "unsendable_root":  # more dims than a shape message holds, on the root
            FD.broadcast(x.reshape((1,) * 15 + x.shape) if rank == 0 else x, dist.WORLD)
    except Exception as e:  # noqa: BLE001  (the parent checks type and message)
        # (its type and bases, "ArgumentError/ValueError/...: message")
        return "/".join(c.__name__ for c in type(e).__mro__[:-2]) + f": {e}"
    return "no error"


def _program_rank(seed, mismatch):
    n, groups, steps = draw_program(seed, mismatch)
    rank = dist.get_rank()
    if mismatch:  # gloo may abort a rank that receives more than it expects: the outcome
        faulthandler.disable()  # looked for, so pytest's dump of its stack would be noise
    made = [dist.new_group(g) for g in groups]  # every rank, in the same order

    results = {}
    for i, step in enumerate(steps):
        g = step["group"]
        group = dist.WORLD if g == "world" else made[g] if isinstance(g, int) else \
            _members(g, n, groups, seed, i)  # "perm": a list of all ranks
        if step["op"] == "error":
            results[i] = _run_error(step, rank, n, group)
        elif rank in _step_members(step, n, groups, seed, i):
            run = {"exchange": _run_exchange, "sync_bn": _run_sync_bn}.get(step["op"], _run_step)
            results[i] = run(seed, i, step, rank, group)
    results["backend"] = (dist.backend, dist.get_backend())  # upstream's property and getter
    return results


def _step_members(step, n, groups, seed, i):
    if step["op"] == "remote":
        return [step["src"], step["dst"]]
    if step["op"] == "exchange":
        return step["ring"]
    return _members(step["group"], n, groups, seed, i)


def _run_exchange(seed, i, step, rank, group):
    """Send this rank's input to the next member of the ring and receive the previous one's,
    the send posted first inside group_start/group_end (without the batch every rank would
    wait in its send for a receive that comes after it)."""
    ring = step["ring"]
    k = ring.index(rank)
    x = mge.tensor(_input(seed, i, rank, step, None), dtype=step["dtype"])
    depth = 2 if step["nested"] else 1

    def batched(func, *args):
        for _ in range(depth):
            dist.group_start()
        out = func(*args)
        for _ in range(depth):
            dist.group_end()
        return out

    def exchange():
        FD.remote_send(x, ring[(k + 1) % len(ring)])
        src = ring[k - 1]
        return FD.remote_recv(src, step["shape"], np.dtype(step["dtype"])) if step["older"] \
            else FD.remote_recv(src)

    if not step["grad"]:
        return batched(exchange).numpy(), None
    gm = GradManager().attach([x])
    with gm:
        got = batched(exchange)
        w = _weight(seed, i, rank, got.shape, step["dtype"])
        # (each backward sends its gradient back before it receives its own: batched too)
        batched(gm.backward, (got * mge.tensor(w, dtype=w.dtype)).sum())
    return got.numpy(), x.grad.numpy()


def _sync_bn_arrays(seed, i, step, k):
    """Member ``k``'s input and output gradient of a sync_bn step, and the statistics and
    affine parameters every member starts from."""
    c = step["channels"]
    rng = np.random.default_rng([seed, 3, i, k])
    x = rng.standard_normal((step["batches"][k], c) + step["spatial"]) * step["scale"] + 1
    w = rng.standard_normal(x.shape)
    shared = np.random.default_rng([seed, 11, i])
    stats = dict(mean=shared.standard_normal(c), var=shared.uniform(0.5, 2, c),
                 weight=shared.standard_normal(c), bias=shared.standard_normal(c))
    dtype = step["dtype"]
    return x.astype(dtype), w.astype(dtype), {k: v.astype(dtype) for k, v in stats.items()}


def _run_sync_bn(seed, i, step, rank, group):
    """(output, running mean, running var) and the gradients of (input, weight, bias) of
    F.nn.sync_batch_norm on this rank, as numpy (None where not differentiated)."""
    members = group if isinstance(group, list) else group.proc_ranks or list(
        range(dist.get_world_size()))
    x, w, stats = _sync_bn_arrays(seed, i, step, members.index(rank))
    shape = (1, step["channels"]) + (1,) * len(step["spatial"])
    x = mge.tensor(x, dtype=step["dtype"])
    mean, var = (mge.tensor(stats[s].reshape(shape), dtype=step["dtype"]) for s in ("mean", "var"))
    weight, bias = (mge.Parameter(stats[s].reshape(shape), dtype=step["dtype"])
                    for s in ("weight", "bias"))
    gm = GradManager().attach([x, weight, bias] if step["affine"] else [x])
    with gm:
        out = F.nn.sync_batch_norm(
            x, mean, var, weight if step["affine"] else None, bias if step["affine"] else None,
            training=True, momentum=step["momentum"], eps=step["eps"],
            eps_mode=step["eps_mode"], group=group)
        if step["grad"]:
            gm.backward((out * mge.tensor(w, dtype=step["dtype"])).sum())
    grads = [None if t.grad is None else t.grad.numpy().reshape(-1 if t is not x else t.shape)
             for t in ([x, weight, bias] if step["affine"] else [x])]
    return (out.numpy(), mean.numpy().reshape(-1), var.numpy().reshape(-1)), \
        (tuple(grads) if step["grad"] else None)


# ----- collectives: the numpy oracle -----

def _parts(a, n, axis):
    return np.split(a, n, axis=axis)


def expected(seed, i, step, members):
    """{rank: (output, input gradient)} of a collective step, from every rank's input and output
    gradient (None where the rank gets no output, or its input's gradient is not checked)."""
    xs = {r: _input(seed, i, r, step, members[0]) for r in members}
    first = _forward(step, members, xs)
    outs = _forward(_then(step), members, first) if step.get("then") else first
    if not step["grad"]:
        return {r: (outs[r], None) for r in members}
    ws = {r: _weight(seed, i, r, outs[r].shape, step["dtype"]) * (r != step.get("unused_by"))
          for r in members if outs[r] is not None}
    if step.get("then"):
        ws = {r: _adjoint(_then(step), members, ws, k, first, outs)
              for k, r in enumerate(members)}
    return {r: (outs[r], _adjoint(step, members, ws, k, xs, first))
            for k, r in enumerate(members)}


def _then(step):
    return dict(op=step["then"], axis=0)


def _forward(step, members, xs):
    """{rank: output} of a collective (None where the rank gets none) on the members' inputs."""
    op, n, root = step["op"], len(members), members[0]
    if op == "remote":
        return {step["src"]: None, step["dst"]: xs[step["src"]]}
    if op == "broadcast":
        return dict.fromkeys(members, xs[root])
    if op == "exchange":  # members: the ring; each gets the one before's input
        return {r: xs[members[k - 1]] for k, r in enumerate(members)}
    if op == "scatter":
        parts = _parts(xs[root], n, step["axis"])
        return {r: parts[k] for k, r in enumerate(members)}
    stack = np.stack([xs[r] for r in members])
    dtype = stack.dtype
    if op.startswith("all_reduce"):
        reduce = {"sum": np.sum, "max": np.max, "min": np.min}[op.rsplit("_", 1)[1]]
        return dict.fromkeys(members, reduce(stack, axis=0).astype(dtype))
    if op == "all_gather":
        return dict.fromkeys(members, np.concatenate(list(stack), axis=step["axis"]))
    if op == "reduce_scatter_sum":
        parts = _parts(stack.sum(axis=0).astype(dtype), n, step["axis"])
        return {r: parts[k] for k, r in enumerate(members)}
    if op == "reduce_sum":
        return {r: stack.sum(axis=0).astype(dtype) if r == root else None for r in members}
    if op == "gather":
        whole = np.concatenate(list(stack), axis=step["axis"])
        return {r: whole if r == root else None for r in members}
    # all_to_all: member k gets part k of every member's input, in group order
    return {r: np.concatenate([_parts(xs[s], n, step["axis"])[k] for s in members],
                              axis=step["concat_axis"]) for k, r in enumerate(members)}


def expected_sync_bn(seed, i, step, members):
    """{rank: (want, slack)} of a sync_bn step. ``want``: ((output, running mean, running
    var), gradients of (input[, weight, bias]) or None), the batch norm of the members' batches
    concatenated, in float64 through torch's autograd (each member's loss is its output times
    its own ``w``; its weight and bias are its own copies, its input's gradient reaches it from
    every member's loss). ``slack``, in the same layout: for a float32 step, how far the same
    computation in float32 is off ``want`` (array by array, the largest difference); for the
    input's gradient at least its rounding bound below, in float64 too (``want`` is rounded). The
    input's gradient ``(w/std) (g - mean(g) - xhat mean(g xhat))`` is a difference of terms
    much larger than itself where the channel's values are few or its std is small (two values
    per channel: exactly zero), so float32's rounding error there is set by those terms, not
    by the result; the ranks sum in another order, with errors as large but not the same."""
    arrays = [_sync_bn_arrays(seed, i, step, k) for k in range(len(members))]
    want = _sync_bn_reference(step, arrays, "float64")
    # the input gradient's terms are bounded by |gamma| / std * max|g| * max(1, xhat^2), a
    # sum of count of them rounds by count ulps of that in the step's dtype, times |x| / std
    # where the values sit far from 0 for their spread (x - mean keeps ulps of |x|, not of
    # the deviation, and xhat = (x - mean) / std carries them). With two values per channel the
    # gradient is exactly zero: a float32 reference may round to 0 where a rank does not (seed
    # 70372); the float64 reference itself is such a rounding: x ~ 1 + 0.1 N(0, 1), std 0.01,
    # 3.4e-12 where a float64 rank gave 9.9e-13 (seed 90201)
    whole = np.concatenate([x for x, _, _ in arrays]).astype(np.float64)
    axes = (0,) + tuple(range(2, whole.ndim))
    count = whole.size // step["channels"]
    var = whole.var(axis=axes)
    std = np.sqrt(var + step["eps"] if step["eps_mode"] == "additive" else
                  np.maximum(var, step["eps"]))
    xhat = (whole - whole.mean(axis=axes, keepdims=True)) / std.reshape(
        (1, -1) + (1,) * len(step["spatial"]))
    gamma = np.abs(arrays[0][2]["weight"]) if step["affine"] else 1.0
    far = np.maximum(1.0, np.abs(whole).max(axis=axes, initial=0) / std)
    terms = float(np.max(gamma / std * far)) * max(float(np.abs(w).max(initial=0))
                                                   for _, w, _ in arrays) * \
        max(1.0, float(np.square(xhat).max(initial=0)))
    rounding = count * float(np.finfo(step["dtype"]).eps) * terms
    if step["dtype"] == "float64":
        slack = [((0, 0, 0), None if g is None else (rounding,) + (0,) * (len(g) - 1))
                 for _, g in want]
    else:
        ref = _sync_bn_reference(step, arrays, step["dtype"])

        def off(got, exact):
            return float(np.abs(got - exact).max(initial=0))

        slack = [(tuple(map(off, ro, wo)), None if wg is None else
                  (max(off(rg[0], wg[0]), rounding),) + tuple(map(off, rg[1:], wg[1:])))
                 for (ro, rg), (wo, wg) in zip(ref, want)]
    dtype = step["dtype"]
    return {r: (((tuple(a.astype(dtype) for a in want[k][0]),
                  None if want[k][1] is None else tuple(g.astype(dtype) for g in want[k][1]))),
                slack[k]) for k, r in enumerate(members)}


def _sync_bn_reference(step, arrays, dtype):
    """Per member ((output, running mean, running var), gradients or None) as float64 numpy,
    computed in torch in ``dtype`` from the members' ``arrays`` (`_sync_bn_arrays`)."""
    import torch

    tdtype = getattr(torch, dtype)
    stats = {name: torch.tensor(v, dtype=tdtype) for name, v in arrays[0][2].items()}
    xs = [torch.tensor(x, dtype=tdtype, requires_grad=True) for x, _, _ in arrays]
    shape = (1, step["channels"]) + (1,) * len(step["spatial"])
    weights = [stats["weight"].reshape(shape).clone().requires_grad_() for _ in arrays]
    biases = [stats["bias"].reshape(shape).clone().requires_grad_() for _ in arrays]
    whole = torch.cat(xs)
    axes = [0] + list(range(2, whole.ndim))
    mean = whole.mean(axes, keepdim=True)
    var = whole.var(axes, unbiased=False, keepdim=True)
    # eps_mode "max": divided by sqrt(max(var, eps)) (upstream's eps_mode)
    std = (var + step["eps"]).sqrt() if step["eps_mode"] == "additive" else \
        var.clamp(min=step["eps"]).sqrt()
    outs = [(x - mean) / std for x in xs]
    if step["affine"]:
        outs = [o * wt + b for o, wt, b in zip(outs, weights, biases)]
    count = whole.numel() // step["channels"]
    momentum = step["momentum"]
    new_mean = stats["mean"] * momentum + mean.reshape(-1).detach() * (1 - momentum)
    new_var = stats["var"] * momentum + var.reshape(-1).detach() * count / (count - 1) * (
        1 - momentum)  # (the running variance is the unbiased one)
    grads = [None] * len(arrays)
    if step["grad"]:
        sum(((o * torch.tensor(w, dtype=tdtype)).sum() for o, (_, w, _) in zip(outs, arrays)),
            torch.zeros((), dtype=tdtype)).backward()
        grads = [tuple(t.grad.double().numpy().reshape(-1 if t is not x else x.shape)
                       for t in ([x, wt, b] if step["affine"] else [x]))
                 for x, wt, b in zip(xs, weights, biases)]
    return [((o.detach().double().numpy(), new_mean.double().numpy(), new_var.double().numpy()),
             g) for o, g in zip(outs, grads)]


def _adjoint(step, members, ws, k, xs, outs):
    """The gradient of member ``k``'s input (None: not checked): each op's adjoint collective
    applied by hand to the output gradients ``ws`` (``xs``, ``outs``: the op's inputs and
    outputs)."""
    op, n, r, root = step["op"], len(members), members[k], members[0]
    if op == "remote":
        return ws[step["dst"]] if r == step["src"] else None
    if op == "exchange":  # (members: the ring) its input went to the next member
        return ws[members[(k + 1) % n]]
    if op in ("all_reduce_max", "all_reduce_min"):  # to the ranks holding the result (as the
        # fork documents; upstream does not say), summed over the output gradients
        return (xs[r] == outs[r]) * sum(ws[s] for s in members)
    if op in ("all_reduce_sum", "all_gather"):
        total = sum(ws[s] for s in members)
        return total if op == "all_reduce_sum" else _parts(total, n, step["axis"])[k]
    if op == "reduce_scatter_sum":
        return np.concatenate([ws[s] for s in members], axis=step["axis"])
    if op == "broadcast":  # other members' inputs only say the device
        return sum(ws[s] for s in members) if r == root else None
    if op == "reduce_sum":
        return ws[root]
    if op == "gather":
        return _parts(ws[root], n, step["axis"])[k]
    if op == "scatter":
        return np.concatenate([ws[s] for s in members], axis=step["axis"]) if r == root else None
    # all_to_all: part j of member k's input went to member j, as its k-th concatenated part
    return np.concatenate([_parts(ws[s], n, step["concat_axis"])[k] for s in members],
                          axis=step["axis"])


ERROR_MESSAGES = {  # what each bad call must raise: (exception type, words of its message)
    "non_member": ("ValueError", "is not a member"),
    "undeclared_group": ("ValueError", "create it first"),
    "no_split": ("ValueError", "equal parts"),
    "bad_axis": ("ValueError", "out of range"),
    "bad_peer": ("ValueError", "the peer must be another rank"),
    "reduce_method": ("ValueError", "reduce_method must be 'sum' or 'mean'"),
    "bad_new_group": ("ValueError", "ranks must be"),
    "bad_dtype": ("TypeError", "int16 cannot be communicated"),
    "unsendable_root": ("ValueError", "at most 16 dims"),
    "empty_new_group": ("ValueError", "new_group: proc_ranks is empty"),
    "bcast_one_tensor": ("TypeError", "bcast_list_: inps must be a list of Tensors, got a single "
                                      "Tensor; pass [x]"),
    "cb_rank_out_of_range": ("ValueError", "is out of range (the world has"),
    "pack_wrong_size": ("ValueError", "pack_allreduce_split: pack_list[1] has shape"),
    "pack_rank_out_of_range": ("ValueError", "is out of range (the world has"),
}


def check_program(seed, mismatch=False):
    """Program ``seed`` on its ranks against the oracle; raises DistMismatch on a difference."""
    if mismatch:
        return _check_mismatch(seed)
    n, groups, steps = draw_program(seed)
    ranks = _launch(_program_rank, n, seed, False)
    for i, step in enumerate(steps):
        if step["op"] == "error":
            kind = step["kind"]
            for r, got in enumerate(ranks):
                cls, words = ("ValueError", "rank 0 could not send") if r and \
                    kind == "unsendable_root" else ERROR_MESSAGES[kind]
                if got[i] is not None and not (cls in got[i].split(":")[0].split("/")
                                               and words in got[i]):
                    raise DistMismatch(f"step {i} ({kind}) on rank {r}: want {cls} saying "
                                       f"{words!r}, got {got[i]}")
            continue
        members = _step_members(step, n, groups, seed, i)
        tolerance = TOLERANCES.get(step["dtype"], (0, 0))  # (integers and bool: exact)
        if step["op"] == "sync_bn":
            _check_sync_bn(seed, i, step, members, ranks)
            continue
        for r, (out, grad) in expected(seed, i, step, members).items():
            got_out, got_grad = ranks[r][i]
            what = f"step {i} ({step['op']}) rank {r}"
            if out is None or got_out is None:
                if (out is None) != (got_out is None):
                    raise DistMismatch(f"{what}: output {got_out}, want {out}")
            else:
                _compare(f"{what} output", got_out, out, tolerance)
            if grad is not None:
                if got_grad is None:
                    raise DistMismatch(f"{what}: the input got no gradient")
                _compare(f"{what} input gradient", got_grad, grad, tolerance)
        if step["op"] in SAME_EVERYWHERE or step.get("then"):
            first = ranks[members[0]][i][0]
            for r in members[1:]:  # upstream: "bitwise identical in all processes"
                if not np.array_equal(ranks[r][i][0], first):
                    raise DistMismatch(f"step {i} ({step['op']}): rank {r}'s output differs "
                                       f"from rank {members[0]}'s")
    for r, got in enumerate(ranks):
        if got["backend"] != ("gloo", "gloo"):
            raise DistMismatch(f"rank {r}: (dist.backend, dist.get_backend()) is "
                               f"{got['backend']}, want ('gloo', 'gloo') on CPU ranks")
    return n, len(steps)


def _check_sync_bn(seed, i, step, members, ranks):
    rtol, atol = TOLERANCES[step["dtype"]]
    for r, ((outs, grads), (out_slack, grad_slack)) in expected_sync_bn(
            seed, i, step, members).items():
        got_outs, got_grads = ranks[r][i]
        for name, got, want, slack in zip(("output", "running mean", "running var"), got_outs,
                                          outs, out_slack):
            # (a rank may be off by twice the float32 reference's own error, as in training)
            _compare(f"step {i} (sync_bn) rank {r} {name}", got, want, (rtol, atol + 3 * slack))
            if name != "output" and not np.array_equal(got, ranks[members[0]][i][0][1 + (
                    name == "running var")]):
                raise DistMismatch(f"step {i} (sync_bn): rank {r}'s {name} differs from rank "
                                   f"{members[0]}'s")
        for name, got, want, slack in zip(("input", "weight", "bias"), got_grads or (),
                                          grads or (), grad_slack or ()):
            if got is None:
                raise DistMismatch(f"step {i} (sync_bn) rank {r}: the {name} got no gradient")
            _compare(f"step {i} (sync_bn) rank {r} {name} gradient", got, want,
                     (rtol, atol + 3 * slack))


def _check_mismatch(seed):
    """The program with a last step whose ranks' shapes differ: the launch must fail (each rank
    waits at most a few seconds in a collective), never return."""
    n, _, steps = draw_program(seed, mismatch=True)
    start = time.monotonic()
    try:
        ranks = _launch(_program_rank, n, seed, True, collective_timeout=10)
    except (dist.WorkerError, TimeoutError):
        return n, len(steps)
    raise DistMismatch(f"step {len(steps) - 1} ({steps[-1]['op']}): ranks gave differently sized "
                       f"inputs, yet every rank returned after {time.monotonic() - start:.0f}s: "
                       f"{[r[len(steps) - 1] for r in ranks]}")


# ----- data-parallel training -----

def draw_training(seed):
    """A plan: ranks, layers, dtype, optimizer, reduce method, bucket size, attach groups,
    per-step per-rank batch sizes."""
    rng = np.random.default_rng([seed, 5])
    n = int(rng.integers(2, 4))
    image = bool(rng.random() < 0.5)
    layers, channels = [], int(rng.integers(1, 3))
    if image:
        for _ in range(int(rng.integers(1, 3))):
            out = int(rng.integers(2, 5))
            layers.append(("conv", channels, out, int(rng.integers(1, 3))))
            kind = str(rng.choice(["syncbn", "frozen_bn", "none"]))
            if kind != "none":
                layers.append((kind, out))
            layers.append(("relu",))
            channels = out
        layers.append(("flatten",))
    else:
        channels = int(rng.integers(2, 6))
    for _ in range(int(rng.integers(1, 3))):
        out = int(rng.integers(2, 6))
        layers.append(("linear", None, out))
        if rng.random() < 0.4:
            layers.append(("syncbn1d", out))
        layers.append(("relu",))
    layers.append(("linear", None, 3))
    dtype = "float64" if rng.random() < 0.8 else "float32"
    opt = str(rng.choice(["sgd", "sgd_momentum", "adam"] if dtype == "float64" else
                         ["sgd", "sgd_momentum"]))
    steps = int(rng.integers(2, 5))
    per_rank = int(rng.integers(2, 4))
    batches = [[per_rank] * n for _ in range(steps)]
    if rng.random() < 0.5:  # an uneven last batch, as a DataLoader's last one
        batches[-1] = [int(b) for b in rng.integers(1, per_rank + 1, n)]
    plan = dict(n=n, image=image, in_channels=int(layers[0][1]) if image else channels,
                layers=layers, dtype=dtype, opt=opt, steps=steps, batches=batches,
                method=str(rng.choice(["mean", "sum"])),
                bucket=int(rng.choice([0, 64, 1024, 10 * 1024 * 1024])),
                attach=int(rng.integers(1, 4)), shared_cb=bool(rng.random() < 0.5))
    # on 3 ranks: maybe only a group of two trains (any order; the third rank idles)
    other = np.random.default_rng([seed, 9])  # (the other draws stay as they were)
    plan["members"] = list(range(n))
    if n == 3 and other.random() < 0.3:
        plan["members"] = [int(r) for r in other.permutation(n)[:2]]
        plan["batches"] = batches = [b[:2] for b in batches]
    # the step under megengine.jit.trace (symbolic or not), when every step has one shape
    traceable = all(b == batches[0] for b in batches)
    plan["trace"] = [None, None, False, True][int(rng.integers(4))] if traceable else None
    # two backward passes per step, each rank's batch in two halves (batch statistics of a
    # half are not the whole batch's: no SyncBatchNorm then)
    plan["accumulate"] = min(map(min, batches)) > 1 and rng.random() < 0.4 and \
        not any(spec[0] in ("syncbn", "syncbn1d") for spec in layers)
    # float64 with a float32 last layer: make_allreduce_cb packs a bucket per dtype
    plan["mixed"] = dtype == "float64" and opt != "adam" and other.random() < 0.25
    plan["name_backend"] = bool(other.random() < 0.5)  # make_allreduce_cb(..., backend=...)
    return plan


class Net(M.Module):
    """The drawn layers; with a ``group``, SyncBatchNorm over it for "syncbn" layers (without,
    BatchNorm)."""

    def __init__(self, plan, group=None):
        super().__init__()
        self.layers = []
        width = plan["in_channels"]  # (of an image network: set at its flatten)
        for i, spec in enumerate(plan["layers"]):
            kind = spec[0]
            if kind == "conv":
                layer = M.Conv2d(spec[1], spec[2], spec[3], padding=spec[3] // 2)
            elif kind in ("syncbn", "syncbn1d"):
                layer = M.SyncBatchNorm(spec[1], group=group) if group is not None else \
                    (M.BatchNorm2d if kind == "syncbn" else M.BatchNorm1d)(spec[1])
            elif kind == "frozen_bn":
                layer = M.BatchNorm2d(spec[1], freeze=True)
            elif kind == "linear":
                layer = M.Linear(width, spec[2])
                width = spec[2]
            else:
                layer = kind
            if kind == "flatten":
                width = self._flat_width(plan)
            if isinstance(layer, M.Module):
                last = i == len(plan["layers"]) - 1 and plan["mixed"]
                _cast(layer, "float32" if last else plan["dtype"])
            self.layers.append(layer)

    @staticmethod
    def _flat_width(plan):
        side, channels = 6, plan["in_channels"]
        for spec in plan["layers"]:
            if spec[0] == "conv":
                side = side + 2 * (spec[3] // 2) - spec[3] + 1
                channels = spec[2]
        return channels * side * side

    def forward(self, x):
        for layer in self.layers:
            if layer == "relu":
                x = F.relu(x)
            elif layer == "flatten":
                x = F.flatten(x, 1)
            else:
                x = layer(x)
        return x


def _cast(layer, dtype):
    """The layer's float parameters and buffers in ``dtype`` (new tensors: a write keeps the
    old tensor's dtype)."""
    for name, value in list(vars(layer).items()):
        if isinstance(value, mge.Tensor) and value.dtype.kind == "f":
            kind = mge.Parameter if isinstance(value, mge.Parameter) else mge.Tensor
            setattr(layer, name, kind(value.numpy(), dtype=dtype))


def _initial_state(plan, seed):
    """Every parameter and buffer of the network, drawn from the seed, in the plan's dtype."""
    net = Net(plan)
    rng = np.random.default_rng([seed, 6])
    state = {}
    for name, value in net.state_dict().items():
        value = np.asarray(value)
        if name.endswith("running_var"):
            state[name] = rng.uniform(0.5, 2, value.shape)
        elif value.dtype.kind == "f":
            state[name] = rng.standard_normal(value.shape) * (0.5 if "weight" in name else 0.1)
        else:
            state[name] = value
        state[name] = state[name].astype(plan["dtype"] if value.dtype.kind == "f" else value.dtype)
    return state


def _set_state(net, state, shift=0.0):
    """Load ``state``, the parameters moved by ``shift``."""
    for name, t in list(net.named_parameters()) + list(net.named_buffers()):
        moved = state[name] + shift if isinstance(t, mge.Parameter) else state[name]
        t._reset(mge.tensor(moved, dtype=state[name].dtype))


def _data(plan, seed, k):
    """Step ``k``'s whole batch (all ranks' parts, in rank order); k=-1: 4 samples to evaluate."""
    rng = np.random.default_rng([seed, 7, k % 1000])
    total = sum(plan["batches"][k]) if k >= 0 else 4
    shape = (total, plan["in_channels"], 6, 6) if plan["image"] else (total, plan["in_channels"])
    return (rng.standard_normal(shape).astype(plan["dtype"]),
            rng.standard_normal((total, 3)).astype(plan["dtype"]))


def _optimizer(plan, params):
    if plan["opt"] == "adam":
        # eps well above rounding: a gradient that is zero in exact arithmetic (a bias before a
        # batch norm) is a rounding error in floats, which Adam's default eps would scale up
        # to a step of lr, differently on the ranks and in the oracle
        return optim.Adam(params, lr=ADAM_LR, eps=ADAM_EPS)
    return optim.SGD(params, lr=0.05, momentum=0.9 if plan["opt"] == "sgd_momentum" else 0.0,
                     weight_decay=1e-3)


def _state(net):
    return {k: np.array(v) for k, v in net.state_dict().items()}


def _train_rank(seed, init):
    """One rank's training: (losses, states after each step, eval-mode output); None on a rank
    outside the training group."""
    plan = draw_training(seed)
    rank, members = dist.get_rank(), plan["members"]
    group = dist.new_group(members) if len(members) < plan["n"] else dist.WORLD
    if rank not in members:
        return None
    n, me = len(members), members.index(rank)  # (me: this rank's part of every batch)
    net = Net(plan, group)
    _set_state(net, init, shift=0.25 * me)  # the root holds init: bcast_list_ must spread it
    dist.bcast_list_(net.parameters(), group)
    params = list(net.parameters())
    gm = GradManager()

    def callback():  # (backend=dist.backend: upstream's examples name it)
        return dist.make_allreduce_cb(plan["method"], group, bucket_size=plan["bucket"],
                                      backend=dist.backend if plan["name_backend"] else None)

    shared = callback()
    for part in np.array_split(np.arange(len(params)), plan["attach"]):
        gm.attach([params[j] for j in part],
                  callbacks=[shared if plan["shared_cb"] else callback()])
    opt = _optimizer(plan, params)
    net.train()

    def step(x, y, sizes):
        if len(set(sizes)) == 1 and plan["method"] == "mean" and not plan["accumulate"]:
            scale = None  # the usual program: the mean over this rank's part
        else:  # the whole batch's mean, split over the ranks (undone by "mean")
            scale = (n if plan["method"] == "mean" else 1) / (sum(sizes) * 3)
        half = x.shape[0] // 2 if plan["accumulate"] else x.shape[0]
        total = 0
        for part in (slice(0, half), slice(half, None))[:2 if plan["accumulate"] else 1]:
            with gm:  # (accumulated: the gradients of both halves add up in .grad)
                sq = (net(x[part]) - y[part]) ** 2
                loss = F.mean(sq) if scale is None else sq.sum() * scale
                gm.backward(loss)
            total = total + loss
        opt.step()
        opt.clear_grad()
        return total

    if plan["trace"] is not None:  # (the sizes are the same at every step then)
        step = trace(step, symbolic=plan["trace"])
    losses, states = [], []
    for k in range(plan["steps"]):
        x, y = _data(plan, seed, k)
        sizes = plan["batches"][k]
        lo = sum(sizes[:me])
        x, y = (mge.tensor(a[lo:lo + sizes[me]], dtype=plan["dtype"]) for a in (x, y))
        losses.append(float(step(x, y, sizes).numpy()))
        states.append(_state(net))
    net.eval()
    return losses, states, net(mge.tensor(_data(plan, seed, -1)[0], dtype=plan["dtype"])).numpy()


def _train_tolerance(plan):
    rtol, atol = TRAIN_TOLERANCES["float32" if plan["mixed"] else plan["dtype"]]
    if plan["opt"] == "adam":
        # a conv or linear bias feeding a batch norm has a zero gradient in exact arithmetic;
        # what the float64 ranks and the one process compute for it is the rounding of a sum
        # of N*H*W cancelling terms (up to 2e-14, differently in each: seed 70418), and Adam's
        # first steps turn a gradient g far below eps into a step of lr * g / eps: ~2e-12, and
        # the batch norm's running mean follows that bias (only atol grows: rtol still
        # governs the O(1) values)
        atol *= ADAM_LR / ADAM_EPS
    return rtol, atol


def _train_one_process(plan, seed, init, dtype=None):
    """The plan's network trained in this process on the whole batches with a mean loss:
    (losses, states after each step, eval-mode output). ``dtype`` "float64": the same
    training (the same float32 initial values and data, upcast) in float64 throughout."""
    if dtype is not None:
        init = {k: v.astype(dtype) if v.dtype.kind == "f" else v for k, v in init.items()}
    arith = dict(plan, dtype=dtype, mixed=False) if dtype is not None else plan
    net = Net(arith)
    _set_state(net, init)
    gm = GradManager().attach(net.parameters())
    opt = _optimizer(plan, net.parameters())
    net.train()
    losses, states = [], []
    for k in range(plan["steps"]):
        x, y = (mge.tensor(a, dtype=arith["dtype"]) for a in _data(plan, seed, k))
        with gm:
            loss = F.mean((net(x) - y) ** 2)
            gm.backward(loss)
        opt.step()
        opt.clear_grad()
        losses.append(float(loss.numpy()))
        states.append(_state(net))
    net.eval()
    return losses, states, net(mge.tensor(_data(plan, seed, -1)[0], dtype=arith["dtype"])).numpy()


def _compare_training(what, got, want, truth, plan):
    """``got`` (a rank's) against ``want`` (one process's, in the plan's dtype). With a float32
    plan, ``truth`` is the same training in float64: a rank sums its gradients in another order
    than one process, so its rounding errors are as large but not the same; where a step is
    ill-conditioned (a channel whose variance before a batch norm falls below its eps makes the
    weight's gradient an amplified difference of nearly equal terms) both float32 runs are
    off the float64 truth by more than the tolerance, and the rank may differ from the one
    process by up to that much: the rank is allowed twice the one process's error (per array,
    the largest), besides the tolerance."""
    rtol, atol = _train_tolerance(plan)
    if truth is not None:
        atol += 3 * float(np.abs(np.asarray(want, np.float64) - truth).max(initial=0))
    _compare(what, got, want, (rtol, atol))


def check_training(seed):
    """Training plan ``seed`` on its ranks against one process on the whole batches."""
    plan = draw_training(seed)
    init = _initial_state(plan, seed)
    results = _launch(_train_rank, plan["n"], seed, init)
    ranks = {r: results[r] for r in plan["members"]}
    first = plan["members"][0]
    previous = mge.get_default_device()
    mge.set_default_device("cpu0")  # the ranks' arithmetic (a GPU machine: not cuDNN's)
    try:
        losses, want_states, want_eval = _train_one_process(plan, seed, init)
        if plan["dtype"] == "float32" or plan["mixed"]:
            true_losses, true_states, true_eval = _train_one_process(plan, seed, init, "float64")
        else:
            true_losses, true_states, true_eval = [None] * plan["steps"], None, None
    finally:
        mge.set_default_device(previous)
    for k in range(plan["steps"]):
        want = want_states[k]
        together = sum(rank_losses[k] for rank_losses, _, _ in ranks.values()) / (
            len(ranks) if plan["method"] == "mean" else 1)
        _compare_training(f"step {k}: the ranks' losses together", np.asarray(together),
                          np.asarray(losses[k]), true_losses[k], plan)
        for r, (_, states, _) in ranks.items():
            if set(states[k]) != set(want):
                raise DistMismatch(f"step {k} rank {r}: state keys {sorted(states[k])}")
            for key in want:
                _compare_training(f"step {k} rank {r} {key}", states[k][key], want[key],
                                  None if true_states is None else true_states[k][key], plan)
                if not np.array_equal(states[k][key], ranks[first][1][k][key]):
                    raise DistMismatch(f"step {k}: rank {r}'s {key} differs from rank "
                                       f"{first}'s")
    for r, (_, _, evaluated) in ranks.items():
        _compare_training(f"rank {r}'s eval-mode output", evaluated, want_eval, true_eval, plan)
    return plan


# ----- the driver -----

def fuzz(seeds, start=0, only=None):
    bad = 0
    for seed in range(start, start + seeds):
        runs = []
        if only in (None, "collectives"):
            runs.append(("collectives", check_program, draw_program))
            if seed % MISMATCH_EVERY == 0:
                runs.append(("mismatched shapes", lambda s: check_program(s, True),
                             lambda s: draw_program(s, True)))
        if only in (None, "training"):
            runs.append(("training", check_training, draw_training))
        for what, run, plan in runs:
            try:
                run(seed)
            except Exception as e:  # a mismatch, or an error where the oracle has a value
                bad += 1
                name = "" if isinstance(e, DistMismatch) else f"{type(e).__name__}: "
                print(f"=== seed {seed} ({what}): {name}{e}\n--- plan ---\n{plan(seed)}",
                      flush=True)
    return bad


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tests.fuzz.dist", description=__doc__)
    p.add_argument("--seeds", type=int, default=100, help="seeds (default 100)")
    p.add_argument("--start", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--only", choices=["collectives", "training"], help="run one half")
    a = p.parse_args(argv)
    t0 = time.time()
    bad = fuzz(a.seeds, a.start, a.only)
    print(f"{a.seeds} seeds ({bad} failing) in {time.time() - t0:.0f}s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
