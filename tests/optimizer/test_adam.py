"""Adam against torch.optim.Adam (bias correction, eps placement, L2 decay); argument checks."""
import pytest
import torch

import megengine as mge
from megengine.optimizer import Adam


@pytest.mark.parametrize("kw", [
    dict(lr=0.01),
    dict(lr=0.02, betas=(0.8, 0.99), eps=1e-3),
    dict(lr=0.01, weight_decay=0.1),
])
def test_adam_matches_torch(side_by_side, kw):
    side_by_side(lambda ps: Adam(ps, **kw), lambda ps: torch.optim.Adam(ps, **kw))


@pytest.mark.parametrize("kw, match", [
    (dict(lr=-1.0), "lr"),
    (dict(lr=0.1, betas=(1.0, 0.9)), "beta at index 0"),
    (dict(lr=0.1, betas=(0.9, -0.1)), "beta at index 1"),
    (dict(lr=0.1, eps=-1e-8), "eps"),
    (dict(lr=0.1, weight_decay=-1.0), "weight_decay"),
])
def test_adam_rejects_bad_hyperparameters(kw, match):
    with pytest.raises(ValueError, match=match):
        Adam([mge.Parameter([1.0])], **kw)


def test_adam_rejects_betas_that_are_not_a_pair():
    with pytest.raises(TypeError, match="betas"):
        Adam([mge.Parameter([1.0])], lr=0.1, betas=(0.9,))
