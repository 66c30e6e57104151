"""megengine.experimental: upstream 1.5's home of traced_module still imports."""
import numpy as np

import megengine as mge
import megengine.module as M


def test_traced_module_under_its_1_5_name_is_the_package():
    import megengine.experimental.traced_module as old
    from megengine.experimental.traced_module import trace_module
    import megengine.traced_module as new

    assert old is new and trace_module is new.trace_module
    net = M.Linear(3, 2)
    x = mge.tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
    np.testing.assert_allclose(trace_module(net, x)(x).numpy(), net(x).numpy(), rtol=1e-6)
