"""Tests for megengine/distributed/group.py: init_process_group's arguments, errors and torchrun mode; groups."""
import multiprocessing
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import megengine as mge
import megengine.distributed as dist
import megengine.functional.distributed as fd


def _cpu_only():
    """These children test the gloo path; forked from a pytest process that may have used CUDA
    (on a GPU machine every test does), they cannot touch CUDA, so they keep to the CPU."""
    from megengine.device import _forget_cuda

    _forget_cuda()


def _child(func, **kwargs):
    """Run ``func(**kwargs)`` in a forked process (the process group is per process); return
    ("ok", value) or ("error", "ExceptionType: message")."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()

    def target():
        _cpu_only()
        try:
            queue.put(("ok", func(**kwargs)))
        except BaseException as error:  # noqa: BLE001
            queue.put(("error", f"{type(error).__name__}: {error}"))
        queue.close()
        queue.join_thread()
        os._exit(0)

    p = ctx.Process(target=target, daemon=True)
    p.start()
    try:
        return queue.get(timeout=60)
    finally:
        p.join(5)
        if p.is_alive():
            p.kill()


def _two_forked_ranks(worker, port):
    """Run ``worker(port, rank, queue)`` for ranks 0 and 1, each in a forked process; return what
    they put on the queue, sorted (by rank when each result starts with it)."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(port, r, queue), daemon=True) for r in range(2)]
    for p in procs:
        p.start()
    try:
        return sorted(queue.get(timeout=60) for _ in procs)
    finally:
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fresh_interpreter(code):
    """Run ``code`` in a new Python (this process has imported the modules already)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return out


def _groups_after_cuda_use_in_the_parent(port, queue):
    # no _cpu_only() here: init_process_group itself must keep this process off CUDA
    from megengine import device

    try:
        lost = device._cuda_lost_in_fork()
        try:
            dist.init_process_group("localhost", port, 1, 0, 0, device_type="xpu")
            refused = "not refused"
        except RuntimeError as error:
            refused = str(error)
        dist.init_process_group("localhost", port, 1, 0, 0, device_type="cpu")
        mge.random.seed(1)  # (CuPy's generators too, where CUDA were usable)
        x = fd.all_reduce_sum(mge.tensor([3.0])).numpy()
        queue.put(("ok", (lost, refused, mge.is_cuda_available(), device._cuda_forgotten,
                          mge.get_default_device(), x.tolist())))
    except BaseException:  # noqa: BLE001  (reported, not a 60 s wait for nothing)
        import traceback

        queue.put(("error", traceback.format_exc()))
    queue.close()
    queue.join_thread()
    os._exit(0)


def test_a_process_forked_after_cuda_use_gets_a_cpu_group_and_a_clear_refusal(monkeypatch):
    # on a GPU machine the pytest process has used CUDA (CuPy's runtime, this module's cached
    # answers say it is usable), and a forked child cannot: a CPU group keeps it off CUDA
    # (random seeds too, which went to CuPy and failed: test_legacy's child died so on an
    # H200), a GPU group is refused naming the fix. Here: as if this process had used CUDA.
    from megengine import device

    monkeypatch.setattr(device, "_cuda_pid", os.getpid())
    assert not device._cuda_lost_in_fork()  # (the process that used it)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    p = ctx.Process(target=_groups_after_cuda_use_in_the_parent,
                    args=(dist.get_free_ports(1)[0], queue), daemon=True)
    p.start()
    try:
        status, got = queue.get(timeout=60)
    finally:
        p.join(5)
        if p.is_alive():
            p.kill()
    assert status == "ok", got
    lost, refused, cuda, forgotten, default, x = got
    assert lost
    assert "forked from one that had already used CUDA" in refused
    assert "start_method='spawn'" in refused and "device_type='cpu'" in refused
    assert (cuda, forgotten, default, x) == (False, True, "cpu0", [3.0])


def test_importing_megengine_distributed_does_not_import_torch():
    code = ("import sys, megengine, megengine.distributed as d, megengine.functional.distributed; "
            "import megengine.module; assert d.get_rank() == 0; print('torch' in sys.modules)")
    out = _fresh_interpreter(code)
    assert out.stdout.strip() == "False"


def test_dist_functional_is_reachable_from_the_package_alone():
    # `import megengine.distributed as dist; dist.functional.all_to_all(...)`, as
    # zhouyizhuang-megvii/MegEngineParallelTutorial and the official train scripts write it
    # (upstream's package imported the submodule); a fresh interpreter, since this process has
    # imported the submodule already
    code = ("import sys, megengine.distributed as dist, megengine.functional as F; "
            "assert dist.functional.all_to_all is F.distributed.all_to_all; "
            "assert dist.functional.all_reduce_sum is F.distributed.all_reduce_sum; "
            "print('torch' in sys.modules)")
    out = _fresh_interpreter(code)
    assert out.stdout.strip() == "False"  # and still no torch at import


def test_the_collectives_import_first_too():
    # `import megengine.functional.distributed` (or `F.distributed`) before megengine.distributed:
    # the package's re-export once read the half-made module and raised ImportError
    code = ("import megengine.functional as F; from megengine.functional.distributed import *; "
            "import megengine.distributed as dist; "
            "from megengine.distributed.functional import all_gather; "
            "assert all_gather is F.distributed.all_gather is dist.functional.all_gather; "
            "assert all_reduce_sum is dist.functional.all_reduce_sum")
    out = _fresh_interpreter(code)


def test_not_distributed_defaults_and_errors():
    assert (dist.get_rank(), dist.get_world_size(), dist.is_distributed(), dist.get_backend()) == \
        (0, 1, False, None)
    dist.group_barrier()  # nothing to wait for
    with pytest.raises(RuntimeError, match="not initialized; call dist.init_process_group"):
        fd.all_reduce_sum(mge.tensor([1.0]))
    with pytest.raises(RuntimeError, match="not initialized"):
        dist.new_group([0])
    # also an AssertionError, as upstream 1.13 asserts there (measured: all_reduce_sum,
    # all_gather and reduce_sum before init_process_group)
    for collective in (fd.all_reduce_sum, fd.all_gather, fd.reduce_sum, fd.broadcast):
        with pytest.raises(AssertionError, match="not initialized"):
            collective(mge.tensor([1.0]))
    with pytest.raises(AssertionError):
        dist.make_allreduce_cb("mean")


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(world_size=2, rank=2), ValueError, r"rank must be in \[0, world_size=2\), got rank=2"),
    (dict(world_size=2, rank=-1), ValueError, r"rank must be in \[0, world_size=2\)"),
    (dict(world_size=0, rank=0), ValueError, "world_size must be >= 1"),
    (dict(port=0), ValueError, r"port must be in \[1, 65535\]"),
    (dict(port="23456"), TypeError, "port must be an int, got str"),
    (dict(master_ip=127), TypeError, "master_ip must be a str"),
    (dict(backend="mpi"), ValueError, "backend must be one of 'gloo', 'nccl', 'auto'"),
    (dict(timeout=0), ValueError, "timeout must be a positive number"),
    (dict(rank=None), ValueError, "give master_ip, port, world_size and rank"),
])
def test_bad_arguments_are_explained(kwargs, error, message):
    args = dict(master_ip="127.0.0.1", port=23456, world_size=2, rank=0, device=0)
    args.update(kwargs)
    with pytest.raises(error, match=message):
        dist.init_process_group(**args)
    assert not dist.is_distributed()


def _init(**kwargs):
    dist.init_process_group(**kwargs)
    return dist.get_rank()


def test_a_port_in_use_is_named():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        status, text = _child(_init, master_ip="127.0.0.1", port=port, world_size=2, rank=0,
                              device=0, timeout=5)
    assert status == "error"
    assert f"port {port} is already in use" in text


def test_a_peer_that_never_arrives_times_out_with_a_clear_error():
    start = time.monotonic()
    status, text = _child(_init, master_ip="127.0.0.1", port=_free_port(), world_size=2, rank=0,
                          device=0, timeout=1)
    assert status == "error"
    assert text.startswith("TimeoutError") and "not all 2 processes arrived within 1 s" in text
    assert time.monotonic() - start < 15


def _torchrun_worker(port, rank, queue):
    _cpu_only()
    # the variables torchrun sets for each worker
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2",
                      RANK=str(rank), LOCAL_RANK=str(rank))
    dist.init_process_group()
    total = fd.all_reduce_sum(mge.tensor(np.array([rank + 1.0], np.float32))).numpy()
    queue.put((rank, dist.get_world_size(), dist.get_backend(), total.tolist()))
    dist.destroy_process_group()
    queue.close()
    queue.join_thread()
    os._exit(0)


def test_no_arguments_reads_torchruns_environment():
    got = _two_forked_ranks(_torchrun_worker, _free_port())
    assert got == [(0, 2, "gloo", [3.0]), (1, 2, "gloo", [3.0])]


def test_no_arguments_outside_torchrun_says_what_is_missing(monkeypatch):
    for name in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK is not set"):
        dist.init_process_group()


def _group_checks():
    out = {"one_process": fd.all_reduce_sum(mge.tensor([2.0])).numpy().tolist()}
    for ranks in ([1], [0, 0], [0, 1]):
        try:
            dist.new_group(ranks)
        except ValueError as error:
            out[str(ranks)] = str(error)
    with dist.override_backend("gloo"):
        pass
    try:
        with dist.override_backend("nccl"):
            pass
    except ValueError as error:
        out["override"] = str(error)
    return out


def test_world_of_one_and_group_errors(run_ranks):
    (got,) = run_ranks(_group_checks, 1)
    assert got["one_process"] == [2.0]
    assert "ranks must be ints in [0, world_size=1)" in got["[1]"]
    assert "ranks must be distinct" in got["[0, 0]"]
    assert "runs on gloo" in got["override"]


def _join_server_and_reduce(port, rank, queue):
    import megengine as mge
    import megengine.distributed as dist
    from megengine.functional.distributed import all_reduce_sum

    _cpu_only()
    try:
        dist.init_process_group("localhost", port, 2, rank, rank, "gloo", timeout=30)
        out = all_reduce_sum(mge.tensor([float(rank + 1), 10.0 * rank]))
        queue.put((rank, "ok", out.numpy().tolist(), dist.get_py_server_addr()))
        dist.destroy_process_group()
    except BaseException as error:  # noqa: BLE001
        queue.put((rank, "error", f"{type(error).__name__}: {error}", None))
    queue.close()
    queue.join_thread()
    os._exit(0)


def test_ranks_join_a_server_started_first_as_upstreams_hand_started_jobs_do():
    port = dist.get_free_ports(1)[0]
    server = dist.Server(port)  # holds the port: rank 0 joins it instead of hosting
    assert server.py_server_port == port
    results = _two_forked_ranks(_join_server_and_reduce, port)
    # all_reduce_sum of [1, 0] and [2, 10], by hand
    assert results == [(0, "ok", [3.0, 10.0], ("localhost", port)),
                       (1, "ok", [3.0, 10.0], ("localhost", port))]


def test_get_free_ports_gives_distinct_bindable_ports():
    ports = dist.get_free_ports(3)
    assert len(set(ports)) == 3
    for p in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("", p))  # free: binding succeeds
    with pytest.raises(ValueError, match="num must be"):
        dist.get_free_ports(-1)


def _share_through_the_client():
    import time

    client = dist.get_client()
    assert client is dist.get_client()  # one per process group
    if dist.get_rank() == 0:
        time.sleep(0.5)  # rank 1 is already waiting in user_get
        client.user_set("shape_of_src0", (2, 3))
        client.user_set("dtype_of_src0", "float32")
        return None
    # a Client made from the rendezvous address, as upstream's Client(master_ip, port), sees it too
    direct = dist.Client(*dist.get_py_server_addr())
    # upstream's second server address: here the one rendezvous serves both
    assert dist.get_mm_server_addr() == dist.get_py_server_addr()
    return client.user_get("shape_of_src0"), direct.user_get("dtype_of_src0")


def test_get_client_shares_values_and_user_get_waits_for_the_set(run_ranks):
    # zhouyizhuang-megvii/MegEngineParallelTutorial's pipeline sends shapes and dtypes this way
    # ahead of remote_recv; user_get on rank 1 must wait until rank 0 has set the key
    # (the shape comes back as a list, as from upstream's XML-RPC server)
    assert run_ranks(_share_through_the_client, 2) == [None, ([2, 3], "float32")]


def _gather_as_basecore_does():
    import pickle

    client = dist.get_client()
    if dist.get_rank() == 1:
        client.user_set("obj_rank1", pickle.dumps({"boxes": [1.5, 2.5]}))
        dist.group_barrier()  # rank 0 has popped the key
        return None
    got = client.user_pop("obj_rank1")
    dist.group_barrier()
    # basecore.utils.gather_pyobj reads .data: upstream's XML-RPC returns bytes as Binary
    value = pickle.loads(got.data)
    client.user_set("probe", 0)
    keys_left = client._store.check(["megengine/user/obj_rank1"])
    return value, keys_left


def test_user_pop_gives_the_value_once_and_bytes_come_back_as_upstreams_binary(run_ranks):
    # earlier versions of this fork had no user_pop and returned bytes as they were set
    assert run_ranks(_gather_as_basecore_does, 2) == [({"boxes": [1.5, 2.5]}, False), None]


def test_get_client_outside_a_process_group_says_so():
    with pytest.raises(RuntimeError, match="not initialized"):
        dist.get_client()
    with pytest.raises(RuntimeError, match="not initialized"):
        dist.get_mm_server_addr()


def test_server_is_importable_from_group_as_in_upstream_1_0():
    from megengine.distributed.group import Server

    assert Server is dist.Server


def _own_device_meets_the_default():
    import megengine as mge
    from megengine.functional.distributed import all_reduce_sum

    rank = dist.get_rank()
    mine = mge.tensor([1.0], device=f"xpu{rank}")  # upstream's idiom: the rank's device by name
    return (str(mge.get_default_device()), dist.WORLD.comp_node,
            all_reduce_sum(mine + mge.tensor([2.0 * rank])).numpy().tolist())


def test_a_cpu_rank_defaults_to_its_own_device_as_upstreams_launcher(run_ranks):
    # upstream's init_process_group sets f"{device_type}{rank}" as the default device, so on
    # rank r a tensor made on xpu{r} (cpu r here) and one made by default meet in one op
    got = run_ranks(_own_device_meets_the_default, 2)
    assert got == [("cpu0", "cpu0:1", [4.0]), ("cpu1", "cpu1:1", [4.0])]
    # the launcher's default device_type, "xpu": the default device is xpu{r} (cpu r on this
    # machine), the device comp_node names, as upstream's test_new_group checks (earlier
    # versions of this fork set cpu{r} there while comp_node said xpu{r})
    if not mge.is_cuda_available():
        got = dist.launcher(_own_device_meets_the_default, n_gpus=2, timeout=120)()
        assert got == [("xpu0", "xpu0:1", [4.0]), ("xpu1", "xpu1:1", [4.0])]


@pytest.mark.skipif(mge.is_cuda_available(), reason="a machine without a GPU")
def test_xpu_workers_forked_after_a_cuda_attempt_on_a_machine_without_a_gpu_run_on_the_cpu(
        monkeypatch):
    # a CUDA build of torch on a machine without a GPU marks the children forked after it
    # tried CUDA (Python 3.13's suite, torch+cu130, no GPU): the launcher's xpu workers were
    # refused as GPU workers forked after CUDA use. The launching process knows there is no
    # GPU, so they are CPU workers. Here: as if this process had used CUDA.
    from megengine import device

    monkeypatch.setattr(device, "_cuda_pid", os.getpid())
    got = dist.launcher(_own_device_meets_the_default, n_gpus=2, timeout=120)()
    assert got == [("xpu0", "xpu0:1", [4.0]), ("xpu1", "xpu1:1", [4.0])]


def _numpy_and_megengine_draws():
    import megengine.random as mr

    return np.random.randn(3).tolist(), mr.normal(size=(3,)).numpy().tolist()


def test_launched_ranks_keep_numpys_global_rng_and_draw_their_own_megengine_random(run_ranks):
    # upstream's launcher forks its workers and init_process_group seeds only megengine's own
    # generator per rank: np.random in every rank continues the launching process's state (a
    # program that makes "the same" input on each rank with np.random relies on it), while
    # megengine.random differs between ranks
    np.random.seed(7)
    expected = np.random.randn(3).tolist()
    np.random.seed(7)
    (np0, mge0), (np1, mge1) = run_ranks(_numpy_and_megengine_draws, 2)
    assert np0 == np1 == expected
    assert mge0 != mge1


def _dropout_mask():
    x = mge.tensor(np.ones(256, np.float32))
    return (mge.functional.nn.dropout(x, 0.5, training=True).numpy() != 0).tolist()


def test_launched_ranks_drop_different_elements_as_upstreams():
    # upstream's dropout draws from its generator seeded per rank in init_process_group; ranks
    # keep numpy's RNG of the launching process (equal draws there), so a CPU dropout drawing
    # from np.random dropped the same elements on every rank
    a, b = dist.launcher(_dropout_mask, n_gpus=2, device_type="cpu")()
    assert a != b
    assert 64 < sum(a) < 192 and 64 < sum(b) < 192  # it did drop, about half


def _backend_property():
    out = {"read": (dist.backend, dist.get_backend())}
    dist.backend = "gloo"  # the backend in use, or upstream's "auto": nothing changes
    dist.backend = "auto"
    try:
        dist.backend = "nccl"
    except ValueError as error:
        out["other"] = str(error)
    out["after"] = dist.backend
    return out


def test_backend_is_a_module_property_as_upstreams(run_ranks):
    # upstream: `dist.backend` reads the process group's backend and assigning sets it; one
    # torch backend serves the group here, so only the one in use is accepted
    (got,) = run_ranks(_backend_property, 1)
    assert got["read"] == ("gloo", "gloo")
    assert got["after"] == "gloo"
    assert "backend: the process group runs on gloo; 'nccl' would need a second process group" \
        in got["other"]
    for attempt in (lambda: dist.backend, lambda: setattr(dist, "backend", "gloo")):
        with pytest.raises(RuntimeError, match="backend: the process group is not initialized"):
            attempt()
    assert "backend" not in vars(dist)  # the failed assignment left no module attribute


def _exchange_around_a_ring(batched):
    """Every rank sends to the next and receives from the previous, sends first."""
    rank, n = dist.get_rank(), dist.get_world_size()
    x = mge.tensor(np.arange(3, dtype="float32") + 10 * rank)
    if batched:
        dist.group_start()
        dist.group_start()  # batches nest, as NCCL's group calls
    fd.remote_send(x, (rank + 1) % n)
    got = fd.remote_recv((rank - 1) % n)
    total = fd.all_reduce_sum(x)  # a collective in the batch: the same result as outside
    if batched:
        dist.group_end()
        dist.group_end()
    return got.numpy().tolist(), total.numpy().tolist()


def test_sends_between_group_start_and_group_end_complete_by_group_end(run_ranks):
    # upstream's group_start/group_end batch NCCL calls: ranks that all send before they
    # receive meet inside a batch; outside one, each send waits for its receiver, so the ring
    # waits on itself until the timeout
    got = run_ranks(_exchange_around_a_ring, 2, True)
    assert got == [([10.0, 11.0, 12.0], [10.0, 12.0, 14.0]), ([0.0, 1.0, 2.0], [10.0, 12.0, 14.0])]


def test_a_ring_of_sends_outside_a_batch_waits_on_itself():
    # what the batch is for (and that the test above can fail)
    # (torch said only "Timed out waiting 3000ms for send operation to complete")
    with pytest.raises(dist.WorkerError, match=r"sending to rank \d failed on rank \d: rank \d "
                       r"died, or did not receive \(remote_recv\) within the process group's "
                       r"timeout \(3 s\). Ranks that all send before they receive put those "
                       r"sends and receives between dist.group_start\(\) and dist.group_end"):
        dist.launcher(_exchange_around_a_ring, n_gpus=2, device_type="cpu", timeout=60,
                      collective_timeout=3)(False)


def test_group_end_without_group_start_says_so():
    # outside a process group too, as upstream's pair works there
    dist.group_start()
    dist.group_end()
    with pytest.raises(RuntimeError, match=r"group_end: no batch is open; call "
                                           r"dist.group_start\(\) first"):
        dist.group_end()


def _rank_0_sends_in_a_batch_nobody_receives():
    if dist.get_rank() == 0:
        dist.group_start()
        fd.remote_send(mge.tensor([1.0, 2.0]), 1)  # posted: returns at once
        dist.group_end()  # waits for it
    else:
        time.sleep(6)  # past the timeout (rank 1's own end-of-run barrier would time out too)
    return "done"


def test_group_end_names_a_send_that_never_completed():
    with pytest.raises(dist.WorkerError, match=r"rank 0 raised(.|\n)*group_end: a remote_send "
                       r"to rank 1 posted in this batch did not complete within the process "
                       r"group's timeout \(3 s\): rank 1 died, or did not call remote_recv"):
        dist.launcher(_rank_0_sends_in_a_batch_nobody_receives, n_gpus=2, device_type="cpu",
                      timeout=60, collective_timeout=3)()
