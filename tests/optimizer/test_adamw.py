"""AdamW against torch.optim.AdamW: the decay is decoupled from the moments."""
import numpy as np
import pytest
import torch

import megengine as mge
from megengine.optimizer import Adam, AdamW


@pytest.mark.parametrize("kw", [
    dict(lr=0.01),  # default weight_decay=1e-2 on both sides
    dict(lr=0.05, weight_decay=0.3, betas=(0.85, 0.95)),
    dict(lr=0.01, weight_decay=0.0),
])
def test_adamw_matches_torch(side_by_side, kw):
    side_by_side(lambda ps: AdamW(ps, **kw), lambda ps: torch.optim.AdamW(ps, **kw))


def test_adamw_differs_from_adam_with_l2():
    # decoupled decay is not the L2 penalty: after a few steps the two must disagree
    def run(cls):
        p = mge.Parameter([1.0, -2.0])
        opt = cls([p], lr=0.1, weight_decay=0.5)
        for g in ([0.1, 0.2], [0.3, -0.1], [0.0, 0.5]):
            p.grad = mge.Tensor(g)
            opt.step()
        return p.numpy()

    assert not np.allclose(run(Adam), run(AdamW), atol=1e-4)
