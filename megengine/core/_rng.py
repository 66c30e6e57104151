"""The host generator behind ``megengine.random`` (its ``seed`` and a launched rank's per-rank
seed replace it), kept here so that ops below ``megengine.random`` draw from it too: dropout on
the CPU. numpy's global RNG stays the user's, as upstream's (a forked rank keeps its launching
process's)."""
import numpy as np

generator = np.random.default_rng()
