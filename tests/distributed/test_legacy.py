"""megengine.distributed's MegEngine 0.x collectives (megengine/distributed/legacy.py) and
init_process_group's 0.x keywords, on local gloo ranks against numpy."""
import multiprocessing as mp
import queue as _queue
import traceback

import numpy as np
import pytest

import megengine as mge
import megengine.distributed as dist


def _zero_x_collectives():
    rank = dist.get_rank()
    x = mge.tensor(np.array([1.0, 2.0], "float32") * (rank + 1))
    out = {
        # 0.x: the model zoo's train.py averaged its loss with all_reduce_sum(loss, "train_loss")
        "sum": dist.all_reduce_sum(x, "train_loss").numpy(),
        "max": dist.all_reduce_max(x, "m").numpy(),
        "min": dist.all_reduce_min(x, "n", nr_ranks=2).numpy(),
        "gather": dist.all_gather(x, "g").numpy(),
        "scatter": dist.reduce_scatter_sum(x, "s").numpy(),
        "bcast": dist.broadcast(x, "b", is_root=rank == 0).numpy(),
    }
    p = mge.Parameter(np.full(3, rank + 5.0, "float32"))
    dist.bcast_param(p, "p")
    out["param"] = p.numpy()
    for name, call in (("nr_ranks", lambda: dist.all_reduce_sum(x, "k", nr_ranks=3)),
                       ("is_root", lambda: dist.broadcast(x, "k", is_root=rank == 1))):
        try:
            call()
        except ValueError as error:
            out[name] = str(error)
    return out


def test_0x_collectives_match_numpy(run_ranks):
    got = run_ranks(_zero_x_collectives, 2)
    a, b = np.array([1.0, 2.0]), np.array([2.0, 4.0])
    for rank, out in enumerate(got):
        np.testing.assert_array_equal(out["sum"], a + b)
        np.testing.assert_array_equal(out["max"], b)
        np.testing.assert_array_equal(out["min"], a)
        np.testing.assert_array_equal(out["gather"], np.concatenate([a, b]))
        np.testing.assert_array_equal(out["scatter"], (a + b)[rank:rank + 1])
        np.testing.assert_array_equal(out["bcast"], a)
        np.testing.assert_array_equal(out["param"], np.full(3, 5.0))  # rank 0's value
        assert "nr_ranks=3 but the world has 2 ranks" in out["nr_ranks"]
        assert "the root is rank 0" in out["is_root"]


def _init_with_0x_keywords(port, queue):
    # 0.x's call (the model zoo's train.py): master_port= and dev= instead of port= and device=
    try:
        dist.init_process_group(master_ip="localhost", master_port=port, world_size=1, rank=0,
                                dev=0, device_type="cpu")
        queue.put(("ok", (dist.get_world_size(),
                          dist.all_reduce_sum(mge.tensor([3.0]), "k").numpy(),
                          mge.get_default_device())))
    except BaseException:  # noqa: BLE001  (said through the queue: not a wait for nothing)
        queue.put(("error", traceback.format_exc()))


def test_init_process_group_takes_0x_keywords():
    port = dist.get_free_ports(1)[0]
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_init_with_0x_keywords, args=(port, queue))
    proc.start()
    try:
        status, got = queue.get(timeout=60)
    except _queue.Empty:
        proc.kill()
        proc.join()
        pytest.fail(f"the forked child neither reported nor ended in 60 s (exit code "
                    f"{proc.exitcode})")
    assert status == "ok", f"the forked child failed:\n{got}"
    world, value, default = got
    proc.join(timeout=30)
    assert proc.exitcode == 0 and world == 1
    assert default == "cpu0"  # upstream: the default device becomes f"{device_type}{device}"
    np.testing.assert_array_equal(value, [3.0])
    with pytest.raises(TypeError, match="give port or its 0.x name master_port, not both"):
        dist.init_process_group("localhost", 1234, 1, 0, master_port=1234)


def test_0x_collectives_outside_a_group_say_what_to_do():
    with pytest.raises(RuntimeError, match="init_process_group"):
        dist.all_reduce_sum(mge.tensor([1.0]), "k")
    p = mge.Parameter([1.0])
    dist.bcast_param(p, "p")  # 0.x: a no-op without a process group
    np.testing.assert_array_equal(p.numpy(), [1.0])
