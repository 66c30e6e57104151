"""Tests of tracing QAT networks with megengine/traced_module: QAT layers, observers and fake quantizers stay whole."""
import numpy as np

import megengine.module as M
import megengine.module.qat as QM
import megengine.quantization as Q
from megengine import Tensor
from megengine.traced_module import TracedModule, trace_module


class MyConvBnRelu(M.ConvBnRelu2d):
    pass


class MyQATConvBnRelu(QM.ConvBnRelu2d):
    pass


class MyObserver(Q.MinMaxObserver):
    pass


class Net(M.Module):
    def __init__(self):
        super().__init__()
        self.conv0 = MyConvBnRelu(3, 4, 3, padding=1)
        self.conv1 = M.ConvBn2d(4, 2, 1)

    def forward(self, x):
        return self.conv1(self.conv0(x))


def test_qat_network_traces_and_matches():
    from functools import partial

    qconfig = Q.QConfig(weight_observer=partial(MyObserver, dtype="qint8_narrow"),
                        act_observer=partial(MyObserver, dtype="qint8"),
                        weight_fake_quant=partial(Q.FakeQuantize, dtype="qint8_narrow"),
                        act_fake_quant=partial(Q.FakeQuantize, dtype="qint8"))
    net = Q.quantize_qat(Net(), qconfig=qconfig, mapping={MyConvBnRelu: MyQATConvBnRelu})
    x = Tensor(np.random.randn(2, 3, 6, 6).astype(np.float32))
    net(x)  # observers see data once
    Q.disable_observer(net)
    net.eval()
    tm = trace_module(net, x)
    # the user's QAT subclass is traced into; its observer subclass is kept whole
    assert isinstance(tm.conv0, TracedModule) and tm.conv0.is_qat
    assert type(tm.conv0.act_observer) is MyObserver
    assert type(tm.conv1) is QM.ConvBn2d
    y = Tensor(np.random.randn(3, 3, 6, 6).astype(np.float32))
    np.testing.assert_allclose(tm(y).numpy(), net(y).numpy(), rtol=1e-6)
    flat = tm.flatten()  # a traced QAT layer stays one call
    node = flat.graph.get_node_by_name("Net_conv0").as_unique()
    assert node.owner is tm.conv0
    assert flat.graph.get_node_by_name("Net_conv0_out").as_unique().expr.inputs[0] is node
    np.testing.assert_allclose(flat(y).numpy(), net(y).numpy(), rtol=1e-6)
