"""SGD against torch.optim.SGD: plain, momentum, Nesterov, weight decay; argument checks."""
import pytest
import torch

import megengine as mge
from megengine.optimizer import SGD


@pytest.mark.parametrize("kw", [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, nesterov=True),
    dict(lr=0.1, weight_decay=0.01),
    dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.02),
])
def test_sgd_matches_torch(side_by_side, kw):
    side_by_side(lambda ps: SGD(ps, **kw), lambda ps: torch.optim.SGD(ps, **kw))


@pytest.mark.parametrize("kw", [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.02),
])
def test_sgd_updates_large_parameters_on_aten_as_torch(side_by_side_on_cpu, kw, monkeypatch):
    # a parameter from 65536 elements updates with ATen's in-place ops (torch's thread pool),
    # smaller ones with numpy's passes: the same values either way
    from megengine.optimizer.sgd import SGD as Sgd

    sizes = []
    real = Sgd._update_aten

    def spy(self, param, data, *args):
        sizes.append(data.size)
        return real(self, param, data, *args)

    monkeypatch.setattr(Sgd, "_update_aten", spy)
    shapes = [(256, 256), (3, 4), (65535,)]
    side_by_side_on_cpu(lambda ps: SGD(ps, **kw), lambda ps: torch.optim.SGD(ps, **kw),
                        steps=3, shapes=shapes)
    assert sizes == [65536] * 3  # the large one, each step
    sizes.clear()
    from megengine.functional import _aten

    with _aten.avoided("update"):  # numpy's passes for all: the same values
        side_by_side_on_cpu(lambda ps: SGD(ps, **kw), lambda ps: torch.optim.SGD(ps, **kw),
                            steps=3, shapes=shapes)
    assert sizes == []


def test_sgd_keeps_a_momentum_buffer_only_with_momentum():
    p, q = mge.Parameter([1.0, 2.0]), mge.Parameter([3.0])
    opt = SGD([{"params": [p], "momentum": 0.9}, {"params": [q]}], lr=0.1)
    p.grad, q.grad = mge.Tensor([1.0, 1.0]), mge.Tensor([1.0])
    opt.step()
    state = opt.state_dict()["state"]
    assert set(state) == {0}
    assert set(state[0]) == {"momentum_buffer"}
    # first step: v = grad, so the buffer holds the gradient itself
    assert state[0]["momentum_buffer"].tolist() == [1.0, 1.0]


@pytest.mark.parametrize("kw, match", [
    (dict(lr=-0.1), "lr"),
    (dict(lr=0.1, momentum=-1.0), "momentum"),
    (dict(lr=0.1, weight_decay=-1e-4), "weight_decay"),
    (dict(lr=0.1, nesterov=True), "nesterov"),
])
def test_sgd_rejects_bad_hyperparameters(kw, match):
    with pytest.raises(ValueError, match=match):
        SGD([mge.Parameter([1.0])], **kw)


def test_sgd_rejects_non_numeric_lr():
    with pytest.raises(TypeError, match="lr must be a number"):
        SGD([mge.Parameter([1.0])], lr="0.1")
