"""Adadelta against torch.optim.Adadelta; argument checks."""
import pytest
import torch

import megengine as mge
from megengine.optimizer import Adadelta


@pytest.mark.parametrize("kw", [
    dict(),
    dict(lr=0.5, rho=0.8, eps=1e-4),
    dict(lr=1.0, weight_decay=0.1),
])
def test_adadelta_matches_torch(side_by_side, kw):
    side_by_side(lambda ps: Adadelta(ps, **kw), lambda ps: torch.optim.Adadelta(ps, **kw))


def test_adadelta_defaults_match_upstream():
    group = Adadelta([mge.Parameter([1.0])]).param_groups[0]
    assert (group["lr"], group["rho"], group["eps"], group["weight_decay"]) == (
        1.0, 0.9, 1e-6, 0.0)


@pytest.mark.parametrize("kw, match", [(dict(rho=1.5), "rho"), (dict(lr=-1.0), "lr"),
                                       (dict(eps=-1.0), "eps")])
def test_adadelta_rejects_bad_hyperparameters(kw, match):
    with pytest.raises(ValueError, match=match):
        Adadelta([mge.Parameter([1.0])], **kw)
