"""Tests for megengine.quantization.internal_fake_quant: upstream's path star-imports the same
objects upstream's module hands out (F, Function, MinMaxObserver, QConfig, QParams)."""
import megengine.functional
from megengine.autodiff import Function as PublicFunction
from megengine.quantization import MinMaxObserver as PublicObserver
from megengine.quantization import QConfig as PublicQConfig
from megengine.quantization import QParams as PublicQParams


def test_star_import_gives_upstreams_names():
    names = {}
    exec("from megengine.quantization.internal_fake_quant import *", names)
    assert names["F"] is megengine.functional
    assert names["Function"] is PublicFunction
    assert names["MinMaxObserver"] is PublicObserver
    assert names["QConfig"] is PublicQConfig
    assert names["QParams"] is PublicQParams
    # the names work as upstream's: F.round rounds, a Function subclass runs through autodiff
    import numpy as np
    import megengine as mge

    class Twice(names["Function"]):
        def forward(self, x):
            return x * 2

        def backward(self, dy):
            return dy * 2

    np.testing.assert_allclose(Twice()(names["F"].round(mge.tensor([1.4, 2.6]))).numpy(),
                               [2.0, 6.0])
