"""Tests of upstream's CollectiveComm descriptor (megengine/core/_imperative_rt/ops.py) on 2 gloo
ranks: each mode gives what the matching megengine.functional.distributed function gives."""
import numpy as np

MODES = ("all_reduce_sum", "all_reduce_max", "all_reduce_min", "all_gather",
         "reduce_scatter_sum", "broadcast", "all_to_all")


def _worker():
    import megengine as mge
    import megengine.distributed as dist
    from megengine.core._imperative_rt.core2 import apply
    from megengine.core.ops.builtin import CollectiveComm

    rank = dist.get_rank()
    x = mge.tensor(np.arange(8, dtype=np.float32).reshape(4, 2) * (rank + 1) - rank)
    return {m: apply(CollectiveComm(nr_devices=2, rank=rank, mode=m), x)[0].numpy()
            for m in MODES}


def test_collective_comm_modes_on_two_ranks(run_ranks):
    results = run_ranks(_worker, 2)
    xs = [np.arange(8, dtype=np.float32).reshape(4, 2) * (r + 1) - r for r in range(2)]
    expect = {
        "all_reduce_sum": [xs[0] + xs[1]] * 2,
        "all_reduce_max": [np.maximum(*xs)] * 2,
        "all_reduce_min": [np.minimum(*xs)] * 2,
        "all_gather": [np.concatenate(xs)] * 2,
        "reduce_scatter_sum": [(xs[0] + xs[1])[:2], (xs[0] + xs[1])[2:]],
        "broadcast": [xs[0]] * 2,
        "all_to_all": [np.concatenate([xs[0][:2], xs[1][:2]]),
                       np.concatenate([xs[0][2:], xs[1][2:]])],
    }
    for rank in range(2):
        for mode in MODES:
            np.testing.assert_array_equal(results[rank][mode], expect[mode][rank], err_msg=mode)
