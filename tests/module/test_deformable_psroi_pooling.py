"""Tests of megengine/module/deformable_psroi_pooling.py: the module passes its settings through."""
import numpy as np

import megengine as mge
import megengine.functional as F
import megengine.module as M


def test_module_is_the_functional_with_its_settings():
    rs = np.random.RandomState(0)
    img = rs.randn(1, 2, 6, 6).astype(np.float32)
    trans = rs.randn(1, 2, 2, 2).astype(np.float32)
    rois = np.array([[0, 1.0, 1.4, 4.0, 5.0]], np.float32)
    m = M.DeformablePSROIPooling(False, 2, 2, 3, 3, 0.9, trans_std=0.2)
    got = m(mge.tensor(img), mge.tensor(rois), mge.tensor(trans))
    want = F.vision.deformable_psroi_pooling(img, rois, trans, no_trans=False, part_size=2,
                                             pooled_h=2, pooled_w=3, sample_per_part=3,
                                             spatial_scale=0.9, trans_std=0.2)
    assert got.shape == (1, 2, 2, 3)
    np.testing.assert_array_equal(got.numpy(), want.numpy())
    # the offsets matter: trans_std 0 is the undeformed pooling
    flat = F.vision.deformable_psroi_pooling(img, rois, trans, True, 2, 2, 3, 3, 0.9)
    assert not np.allclose(got.numpy(), flat.numpy())
