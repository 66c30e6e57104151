"""Tests for megengine/distributed/launcher.py: results by rank, and failures reported by rank, never a hang."""
import os
import signal
import time

import numpy as np
import pytest

import megengine as mge
import megengine.distributed as dist
import megengine.functional.distributed as fd
from devices import run_python


def _who():
    return dist.get_rank(), dist.get_world_size(), dist.get_backend(), dist.is_distributed()


def test_results_come_back_in_rank_order():
    run = dist.launcher(n_gpus=3, device_type="cpu", timeout=60)(_who)  # upstream's decorator form
    assert run() == [(0, 3, "gloo", True), (1, 3, "gloo", True), (2, 3, "gloo", True)]
    assert not dist.is_distributed()  # the parent never joins the group


def _raise_on_rank_1():
    x = mge.tensor(np.ones(3, np.float32))
    if dist.get_rank() == 1:
        raise ValueError("boom on rank 1")
    fd.all_reduce_sum(x)  # rank 0 waits here for a peer that is gone
    return "unreachable"


def test_a_worker_that_raises_is_reported_with_rank_and_traceback():
    start = time.monotonic()
    with pytest.raises(dist.WorkerError, match="rank 1 raised") as info:
        dist.launcher(_raise_on_rank_1, n_gpus=2, device_type="cpu", timeout=120)()
    assert info.value.rank == 1
    assert isinstance(info.value, AssertionError)  # upstream's launcher asserts the exit codes
    assert "ValueError: boom on rank 1" in str(info.value)
    assert "_raise_on_rank_1" in str(info.value)  # the traceback names the function
    # the waiting rank was stopped, not waited for until the timeout (a bound far from the
    # run's few seconds: ranks start slowly on a loaded machine)
    assert time.monotonic() - start < 60


def _exit_on_rank_1(code):
    if dist.get_rank() == 1:
        exit(code)  # (the builtin a script calls: SystemExit)
    return dist.get_rank()


def test_a_worker_that_exits_with_code_0_returns_none_and_another_code_fails(monkeypatch):
    # upstream's test_collect_results (early_return): exit(0) in the function gives None for
    # that rank, with a warning (earlier versions of this fork raised WorkerError)
    import megengine.logger

    warned = []
    monkeypatch.setattr(megengine.logger, "get_logger",
                        lambda *a: type("Log", (), {"warning": staticmethod(warned.append)}))
    assert dist.launcher(_exit_on_rank_1, n_gpus=2, device_type="cpu", timeout=120)(0) \
        == [0, None]
    assert len(warned) == 1 and "ranks [1] exited with code 0" in warned[0]
    with pytest.raises(dist.WorkerError, match="rank 1 raised") as info:
        dist.launcher(_exit_on_rank_1, n_gpus=2, device_type="cpu", timeout=120)(3)
    assert "SystemExit: 3" in str(info.value)


def _train_then_die():
    from megengine.autodiff import GradManager

    w = mge.Parameter(np.ones(1000, np.float32))
    gm = GradManager().attach([w], callbacks=[dist.make_allreduce_cb("mean")])
    for step in range(1000):
        if step == 3 and dist.get_rank() == 1:
            os.kill(os.getpid(), signal.SIGKILL)  # dies mid-training, no chance to report
        with gm:
            gm.backward((w * w).sum())
        w._reset(w - 0.01 * w.grad)
        w.grad = None
    return "finished"


def test_a_killed_worker_makes_the_launcher_fail_naming_its_rank():
    with pytest.raises(dist.WorkerError, match=r"rank 1 died \(killed by SIGKILL\)") as info:
        # noticed when it happens: waiting for the timeout would raise TimeoutError instead
        dist.launcher(_train_then_die, n_gpus=2, device_type="cpu", timeout=120)()
    assert info.value.rank == 1


def _sleep_forever():
    time.sleep(600)


def test_the_whole_run_is_bounded_by_timeout():
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"ranks \[0, 1\] did not finish within timeout=1 s"):
        dist.launcher(_sleep_forever, n_gpus=2, device_type="cpu", timeout=1)()
    assert time.monotonic() - start < 10


def test_bad_launcher_arguments_are_explained():
    with pytest.raises(ValueError, match="n_gpus must be a positive int"):
        dist.launcher(_who, n_gpus=0)
    with pytest.raises(TypeError, match="n_gpus must be a positive int, got float 1.5"):
        dist.launcher(_who, n_gpus=1.5)  # (upstream 1.13: a TypeError from range())
    # upstream 1.13 measured: its ranks fail an assert in init_process_group
    with pytest.raises(AssertionError, match="do not fit in world_size=2"):
        dist.launcher(_who, n_gpus=2, world_size=2, rank_start=1)
    with pytest.raises(ValueError, match=r"rank_start=2 join the rendezvous the launcher of "
                                         r"rank 0 serves; give its port \(that launcher's .port\)"):
        dist.launcher(_who, n_gpus=2, world_size=4, rank_start=2)


def _rendezvous_port():
    return dist.get_py_server_addr()[1]


def test_the_launcher_serves_the_rendezvous_from_when_it_is_made_as_upstreams():
    # upstream's launcher makes a Server on rank 0's machine at once and sets .port to its
    # port (0 picks one), which users read, e.g. to start the other machines' launchers
    run = dist.launcher(_rendezvous_port, n_gpus=2, device_type="cpu", timeout=60)
    assert isinstance(run.server, dist.Server) and run.port == run.server.py_server_port > 0
    assert run() == [run.port] * 2  # the ranks met there
    # called again, the ranks meet at the same server under keys of their own: an earlier
    # call's keys (rank addresses of processes that are gone) would mislead them
    assert run() == [run.port] * 2
    # a job over several machines: rank 0's machine may let its server pick the port
    assert dist.launcher(_who, n_gpus=2, world_size=4).port > 0


def _rank_1_skips_the_collective():
    if dist.get_rank() == 0:
        fd.all_reduce_sum(mge.tensor(np.ones(3, np.float32)))
    else:
        # stay away past the collective timeout: rank 1's own end-of-run barrier would otherwise
        # time out in the same instant (or be paired with rank 0's all_reduce by gloo)
        time.sleep(8)
    return "done"


def test_a_collective_whose_peer_left_says_so():
    with pytest.raises(dist.WorkerError) as info:
        dist.launcher(_rank_1_skips_the_collective, n_gpus=2, device_type="cpu", timeout=60,
                      collective_timeout=5)()
    assert info.value.rank == 0
    assert ("all_reduce on Group([0, 1]) failed on rank 0: a peer process died, or did not call "
            "the same collective within the process group's timeout (5 s)") in str(info.value)


def _device_seen():
    from megengine.device import canonical_device

    return mge.get_default_device(), canonical_device(None), mge.is_cuda_available()


def test_cpu_workers_launch_from_a_process_that_used_cuda(monkeypatch):
    # on a GPU machine every pytest process has used CUDA before it launches CPU workers; they
    # need no CUDA, so the launcher must not refuse, and the workers keep their tensors on the CPU
    # (a forked child cannot use its parent's CUDA context)
    import torch

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    got = dist.launcher(_device_seen, n_gpus=2, device_type="cpu", timeout=60)()
    assert got == [("cpu0", "cpu0", False), ("cpu1", "cpu1", False)]  # rank r: cpu r
    with pytest.raises(RuntimeError, match="CUDA is already initialized"):
        dist.launcher(_device_seen, n_gpus=1, device_type="gpu", timeout=60)()


def _backward_as_after_gpu_autograd_in_the_parent():
    # what torch raises in a forked rank once the launching process ran a torch backward pass
    # where torch sees a GPU (not to be provoked on a machine without one)
    if dist.get_rank() == 1:
        from megengine.distributed.launcher import _AUTOGRAD_FORK

        raise RuntimeError(f"{_AUTOGRAD_FORK}. See "
                           "https://github.com/pytorch/pytorch/wiki/Autograd-and-Fork")
    return "fine"


def test_torch_autograd_refused_in_a_forked_rank_is_explained_with_what_to_do():
    with pytest.raises(dist.WorkerError, match="rank 1 raised") as info:
        dist.launcher(_backward_as_after_gpu_autograd_in_the_parent, n_gpus=2,
                      device_type="cpu", timeout=120)()
    message = str(info.value)
    assert "Unable to handle autograd's threading" in message  # torch's own words first
    assert "this process ran a torch backward pass" in message
    assert "Call the launcher before any torch backward pass" in message
    assert "start_method='spawn'" in message
    # other failures get no such advice
    with pytest.raises(dist.WorkerError) as info:
        dist.launcher(_raise_on_rank_1, n_gpus=2, device_type="cpu", timeout=120)()
    assert "start_method" not in str(info.value)


def _scoped_multiply():
    from megengine.utils.profiler import scope

    with scope(f"rank{dist.get_rank()}_step"):
        return (mge.tensor([1.5]) * 2).numpy().tolist()


def test_each_rank_launched_under_a_profiler_writes_its_own_trace(tmp_path, run_ranks):
    # upstream's test_profiler_dist: a launch inside `with Profiler(dir)` leaves n_gpus + 1 files
    import json

    from megengine.utils.profiler import Profiler

    with Profiler(str(tmp_path)):
        assert run_ranks(_scoped_multiply, 2) == [[3.0], [3.0]]
    names = sorted(os.listdir(tmp_path))
    assert len(names) == 3 and all(n.endswith(".chrome_timeline.json") for n in names)
    assert f"{os.getpid()}.chrome_timeline.json" in names
    seen = set()
    for name in names:
        with open(tmp_path / name) as f:
            seen |= {e.get("name") for e in json.load(f)["traceEvents"]}
    assert {"rank0_step", "rank1_step"} <= seen  # each worker recorded its own ops


def test_spawned_ranks_launched_under_a_profiler_write_their_own_traces(tmp_path):
    # GPU workers are spawned (a process that used CUDA cannot fork them), and a spawned worker
    # inherits no running profiler: the launcher hands it the profiler's settings instead
    from megengine.utils.profiler import Profiler

    with Profiler(str(tmp_path)):
        ranks = dist.launcher(dist.get_rank, n_gpus=2, device_type="cpu", timeout=120,
                              start_method="spawn")()
    assert ranks == [0, 1]
    names = sorted(os.listdir(tmp_path))
    assert len(names) == 3 and all(n.endswith(".chrome_timeline.json") for n in names)


def _labels_through_worker_processes():
    from megengine.data import DataLoader, RandomSampler
    from megengine.data.dataset import ArrayDataset

    ds = ArrayDataset(np.zeros((8, 2), np.float32), np.arange(8, dtype=np.int32))
    loader = DataLoader(ds, sampler=RandomSampler(ds, batch_size=2, seed=3), num_workers=2)
    return sorted(int(v) for _, labels in loader for v in labels)


def test_a_rank_may_start_dataloader_worker_processes():
    # MegEngine/Models' segmentation train.py builds DataLoader(num_workers=2) inside every
    # launched rank; a daemonic rank could not start them
    seen = dist.launcher(_labels_through_worker_processes, n_gpus=2, device_type="cpu", timeout=60)()
    assert len(seen[0]) == len(seen[1]) == 4  # the distributed sampler gives each rank half
    assert sorted(seen[0] + seen[1]) == list(range(8))


def test_forked_ranks_run_torch_kernels_after_the_launching_process_ran_one():
    # torch's CPU thread pool (OpenMP) does not survive fork: a rank forked after this process
    # ran a parallel op would wait forever in its first one. A fresh interpreter with a
    # 2-thread pool (the suite's own process runs torch on one thread, which hides it)
    code = (
        "import numpy as np, torch, megengine as mge, megengine.functional as F\n"
        "import megengine.distributed as dist\n"
        "torch.set_num_threads(2)\n"
        "x, w = np.ones((2, 3, 64, 64), 'float32'), np.ones((4, 3, 3, 3), 'float32')\n"
        "want = float(torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(w)).sum())\n"
        "def rank():\n"
        "    y = F.conv2d(mge.tensor(x), mge.tensor(w))\n"
        "    return float(y.sum().numpy()), torch.get_num_threads()\n"
        "print(dist.launcher(rank, n_gpus=2, device_type='cpu', timeout=60)() == [(want, 1)] * 2)\n"
        "print(torch.get_num_threads())\n")
    # (MGE_NUM_THREADS=2: the engine's ATen kernels, first loaded in a rank, set it there; the
    # last two words: torch 2.8's gloo prints "[Gloo] Rank 0 is connected to ..." on stdout)
    assert run_python(code, MGE_NUM_THREADS="2")[-2:] == ["True", "2"]  # the launcher keeps its own



def _rank_0_computes_past_the_timeout():
    if dist.get_rank() == 0:
        time.sleep(7)
    return "done"


def test_a_rank_left_waiting_at_the_end_says_why():
    # rank 1 returns at once and waits at the launcher's end-of-run barrier past the timeout
    # (rank 0 still computing, or in a collective rank 1 did not call: gloo pairs that with the
    # barrier); it said only "Timed out waiting 3000ms for recv operation to complete"
    with pytest.raises(dist.WorkerError, match=r"rank 1 returned from the launched function, but "
                       r"the other ranks did not all reach its end within the process group's "
                       r"timeout \(3 s\).*same collectives in the same order.*still computing"):
        dist.launcher(_rank_0_computes_past_the_timeout, n_gpus=2, device_type="cpu",
                      timeout=60, collective_timeout=3)()


def _float32_on_rank_0_int32_on_rank_1():
    x = mge.tensor(np.ones(3, "float32" if dist.get_rank() == 0 else "int32"))
    return fd.all_reduce_sum(x).numpy().tolist()


def test_torch_distributed_debug_detail_catches_collectives_that_differ(monkeypatch):
    # without it (as upstream) the bytes of one dtype are summed as another's: rank 0 got
    # [1.0, 1.0, 1.0000001] and rank 1 [1065353216, ...]; torch's fingerprint check, set by
    # TORCH_DISTRIBUTED_DEBUG=DETAIL in the launching process, compares op, shapes and dtypes
    monkeypatch.setenv("TORCH_DISTRIBUTED_DEBUG", "DETAIL")
    with pytest.raises(dist.WorkerError, match=r"all_reduce on Group\(\[0, 1\]\) failed on rank "
                       r"\d: the ranks called collectives that differ in op, shapes or dtypes.*"
                       r"Detected mismatch between collectives.*dtypes: (Floatvs Int|Intvs Float)"):
        dist.launcher(_float32_on_rank_0_int32_on_rank_1, n_gpus=2, device_type="cpu",
                      timeout=60, collective_timeout=10)()
