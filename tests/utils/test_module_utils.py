"""megengine.utils.module_utils: dotted-key access into a Module tree and the scoped mode switch."""
import numpy as np
import pytest

import megengine.module as M
from megengine.utils.module_utils import (
    get_expand_structure,
    set_expand_structure,
    set_module_mode_safe,
)


class Tree(M.Module):
    def __init__(self):
        super().__init__()
        self.head = M.Linear(2, 3)
        self.blocks = [M.ReLU(), {"gate": M.Sigmoid(), "norm": M.BatchNorm1d(3)}]
        self.fixed = (M.Identity(),)
        self.seq = M.Sequential(M.Linear(3, 3), M.ReLU())

    def forward(self, x):
        return x


def test_get_follows_every_key_named_modules_and_parameters_give():
    net = Tree()
    for key, obj in list(net.named_modules())[1:] + list(net.named_parameters()):
        assert get_expand_structure(net, key) is obj
    assert get_expand_structure(net, "blocks.1.gate") is net.blocks[1]["gate"]


def test_set_replaces_attributes_items_and_sequential_layers():
    net = Tree()
    new_head, new_gate, new_first, new_layer = M.Linear(2, 3), M.GELU(), M.Identity(), M.GELU()
    set_expand_structure(net, "head", new_head)
    set_expand_structure(net, "blocks.1.gate", new_gate)
    set_expand_structure(net, "blocks.0", new_first)
    set_expand_structure(net, "seq.1", new_layer)
    assert net.head is new_head and net.blocks[1]["gate"] is new_gate
    assert net.blocks[0] is new_first and net.seq[1] is new_layer
    names = dict(net.named_modules())
    assert names["seq.1"] is new_layer and names["blocks.1.gate"] is new_gate
    with pytest.raises(TypeError, match="tuple"):
        set_expand_structure(net, "fixed.0", M.ReLU())
    with pytest.raises(AttributeError, match="nothing"):
        get_expand_structure(net, "nothing.here")


def test_mode_switch_is_scoped_and_restores_each_modules_own_mode():
    net = Tree()
    net.train()
    net.seq.eval()  # a mixed tree: its own modes must come back, not one global mode
    before = {name: m.training for name, m in net.named_modules()}
    with set_module_mode_safe(net, training=False) as inside:
        assert inside is net
        assert not any(m.training for m in net.modules())
    assert {name: m.training for name, m in net.named_modules()} == before
    with pytest.raises(RuntimeError):
        with set_module_mode_safe(net, training=True):
            assert all(m.training for m in net.modules())
            raise RuntimeError("leaves the block early")
    assert {name: m.training for name, m in net.named_modules()} == before
