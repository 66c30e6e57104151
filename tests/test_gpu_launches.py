"""What a GPU training step asks of the device, counted on the simulated GPU (benchmarks/count_launches.py): kernel launches and host syncs per step against torch's same step.

A small step on a GPU is bound by the host's work per kernel launch (issue 12's measurements:
the engine's step took 1.27-1.67x torch's where it launched that much more), so the count is
kept at torch's: these tests fail when a change adds launches or syncs to the benchmark steps.
Counts, not times: the same on every machine.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def counts():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.pop("MGE_SIM_CUDA", None)  # (the script installs the simulation itself)
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "count_launches.py"),
                          "--json"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)


def test_an_mlp_step_launches_no_more_kernels_than_torch(counts):
    # SGD's update of all parameters in one kernel, the bias in the product's kernel
    mlp = counts["MLP 784-256-10"]
    assert mlp["engine"]["kernels"] <= mlp["torch"]["kernels"], mlp
    # one host sync: cross entropy's check that the labels are in [0, C), which torch does
    # inside its kernel (a device-side assert that ends the process)
    assert mlp["engine"]["syncs"] <= 1, mlp


def test_a_cnn_step_launches_fewer_kernels_than_torch(counts):
    # max pooling's backward is one kernel; batch norm's running statistics are updated by
    # ATen in the buffers' own storage, as torch's (no copies for it, no write back). Above
    # torch's count: the labels' int64 cast and their range check (two); below it: SGD's
    # momentum step in one kernel (torch's multi-tensor path: three), no num_batches_tracked
    # (one): 20 against 21
    cnn = counts["CNN conv-bn-relu-pool-linear"]
    assert cnn["engine"]["kernels"] <= cnn["torch"]["kernels"] - 1, cnn
    assert cnn["engine"]["syncs"] <= 1, cnn


def test_a_transformer_mlp_block_with_adam_launches_no_more_kernels_than_torch(counts):
    # Adam's step in two kernels (torch's multi-tensor path: eight), gelu's limits fixed in one
    block = counts["MLP block (LayerNorm, GELU, Adam)"]
    assert block["engine"]["kernels"] <= block["torch"]["kernels"], block
    assert block["engine"]["syncs"] <= 1 and block["torch"]["syncs"] == 0, block


@pytest.mark.parametrize("loss", ["squared error", "smooth L1", "BCE with logits"])
def test_a_loss_with_a_fused_aten_kernel_launches_no_more_than_torchs(counts, loss):
    # ATen's fused loss and its backward on CUDA arrays, where the array code launched a kernel
    # per step (8, 14 and 18 kernels against torch's 3, 3 and 6)
    c = counts[f"loss: {loss}"]
    assert c["engine"]["kernels"] <= c["torch"]["kernels"], c
    assert c["engine"]["syncs"] == 0, c
