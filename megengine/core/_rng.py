"""The host generator behind ``megengine.random`` (its ``seed`` and a launched rank's per-rank
seed replace it), kept here so that code below ``megengine.random`` draws from it too: dropout
on the CPU, the module initialisers. numpy's global RNG stays the user's, as upstream's (a
forked rank keeps its launching process's)."""
import numpy as np

generator = np.random.default_rng()
