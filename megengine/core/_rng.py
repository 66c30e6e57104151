"""The host generator behind ``megengine.random`` (its ``seed`` and a launched rank's per-rank
seed replace it), kept here so that code below ``megengine.random`` draws from it too: dropout
on the CPU, the module initialisers. numpy's global RNG stays the user's, as upstream's (a
forked rank keeps its launching process's)."""
import time

import numpy as np

generator = np.random.default_rng()

# upstream's DataLoader draws each iteration's worker seed from a stream of its own, a numpy
# MT19937 seeded from the clock at import and restarted by megengine.random.seed; so is ours,
# so that a seeded program's workers draw what upstream's draw
data_seeds = np.random.MT19937(int(time.time()))
