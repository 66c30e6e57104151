"""CI slice of the DataLoader fuzzer (`loader`: drawn datasets, samplers and loaders against
the documented rules; the full runs are offline, ``python -m tests.fuzz.loader``), and checks
that it catches what it must."""
import numpy as np
import pytest

from megengine.data import sampler as sampler_module
from megengine.data.collator import Collator

from . import loader
from .loader import Draw, LoaderMismatch, check

SEEDS = range(60)  # every dataset kind, sampler and worker count: about 1 s


@pytest.mark.parametrize("seed", SEEDS)
def test_drawn_loaders_give_the_documented_batches(seed):
    assert check(seed) in ("ok", "refused")


def test_the_slice_covers_every_kind():
    draws = [Draw(np.random.default_rng([s, 61])) for s in SEEDS]
    ok = [d for d, s in zip(draws, SEEDS) if check(s) == "ok"]
    assert {d.kind for d in ok} == {"array", "dict", "tensors", "stream", "shards"}
    assert {d.sampler for d in ok} >= {"sequential", "random", "replacement", "indices",
                                       "infinite"}
    assert {d.num_workers for d in ok} >= {0, 1, 2}  # (parallel streams: up to 3)
    assert any(d.divide for d in ok) and any(d.preload for d in ok)
    assert any(d.world_size > 1 for d in ok)


def _first(predicate):
    return next(s for s in range(500) if predicate(Draw(np.random.default_rng([s, 61])))
                and check(s) == "ok")


def test_a_sampler_that_repeats_its_first_epoch_is_caught(monkeypatch):
    seed = _first(lambda d: d.sampler == "random" and d.n > 3)
    monkeypatch.setattr(sampler_module.RandomSampler, "_permutation",
                        lambda self: np.random.RandomState(self.seed).permutation(
                            len(self.dataset)))
    with pytest.raises(LoaderMismatch, match="epoch 1"):
        check(seed)


def test_a_shuffled_batch_is_caught(monkeypatch):
    seed = _first(lambda d: d.num_workers == 2 and d.batch_size > 2 and d.kind != "stream")
    real = Collator.apply

    def reversed_samples(self, inputs):  # a batch's samples in reverse (its fields as they are)
        whole = isinstance(inputs[0], (tuple, dict))
        return real(self, list(inputs)[::-1] if whole else inputs)

    monkeypatch.setattr(Collator, "apply", reversed_samples)
    with pytest.raises(LoaderMismatch):
        check(seed)


def test_a_wrong_share_of_ranks_is_caught(monkeypatch):
    seed = _first(lambda d: d.world_size > 1 and d.sampler == "sequential")
    # (a list epoch takes `scatter`; a range the same rule on arrays)
    monkeypatch.setattr(sampler_module.SequentialSampler, "sample",
                        lambda self: list(range(len(self.dataset))))
    monkeypatch.setattr(sampler_module.MapSampler, "scatter",
                        lambda self, indices: indices[: self.num_samples])
    with pytest.raises(LoaderMismatch):
        check(seed)


def test_command_line(capsys):
    assert loader.main(["--seeds", "5"]) == 0
    assert "5 configurations (0 failing)" in capsys.readouterr().out
