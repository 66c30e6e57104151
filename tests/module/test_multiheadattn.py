"""Tests of megengine/module/multiheadattn.py: upstream's packed parameter, init and call, against
torch.nn.MultiheadAttention holding the same weights."""
import numpy as np
import pytest
import torch

import megengine as mge
import megengine.module as M


def test_multi_head_attention_layer_as_upstream_documents():
    # upstream's docstring example, run on the CPU (upstream runs it on cuDNN only)
    batch_size, seq_len, embed_dim, num_heads = 2, 4, 4, 2
    x = mge.tensor(np.arange(batch_size * seq_len * embed_dim).astype(np.float32)
                   .reshape(batch_size, seq_len, embed_dim))
    m = M.MultiHeadAttention(embed_dim, num_heads)
    out, weights = m(x, x, x)
    assert out.shape == (2, 4, 4) and weights is None
    # the packed parameter: 4 weights of 4x4, then 4 biases of 4, the biases zero after init
    assert m.io_weight_bias.shape == (1, 4 * 16 + 4 * 4)
    assert not m.io_weight_bias.numpy()[0, 64:].any() and m.io_weight_bias.numpy()[0, :64].any()
    assert M.MultiHeadAttention(4, 2, bias=False, kdim=3, vdim=5).io_weight_bias.shape == \
        (1, (4 + 3 + 5 + 4) * 4)


def test_multi_head_attention_layer_matches_torch_with_the_same_weights():
    e, heads = 6, 3
    m = M.MultiHeadAttention(e, heads)
    m.io_weight_bias[...] = mge.tensor(np.random.randn(1, 4 * e * e + 4 * e).astype(np.float32))
    flat = m.io_weight_bias.numpy()[0]
    wq, wk, wv, wo = (flat[i * e * e:(i + 1) * e * e].reshape(e, e) for i in range(4))
    bq, bk, bv, bo = (flat[4 * e * e + i * e:4 * e * e + (i + 1) * e] for i in range(4))
    t = torch.nn.MultiheadAttention(e, heads, batch_first=True)
    with torch.no_grad():  # torch computes x @ W.T; upstream packs W for x @ W
        t.in_proj_weight.copy_(torch.tensor(np.concatenate([wq.T, wk.T, wv.T])))
        t.in_proj_bias.copy_(torch.tensor(np.concatenate([bq, bk, bv])))
        t.out_proj.weight.copy_(torch.tensor(wo.T))
        t.out_proj.bias.copy_(torch.tensor(bo))
    q, kv = np.random.randn(2, 3, e).astype(np.float32), np.random.randn(2, 5, e).astype(np.float32)
    pad = np.array([[False] * 4 + [True], [False] * 5])
    want, want_w = t(torch.tensor(q), torch.tensor(kv), torch.tensor(kv),
                     key_padding_mask=torch.tensor(pad))
    got, got_w = m(mge.tensor(q), mge.tensor(kv), mge.tensor(kv),
                   key_padding_mask=mge.tensor(pad), need_weights=True, average_attn_weights=True)
    np.testing.assert_allclose(got.numpy(), want.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_w.numpy(), want_w.detach().numpy(), rtol=1e-4, atol=1e-6)


def test_multi_head_attention_layer_rejects_what_upstream_rejects():
    with pytest.raises(ValueError, match="divisible"):
        M.MultiHeadAttention(5, 2)
    with pytest.raises(ValueError, match="add_bias_kv"):
        M.MultiHeadAttention(4, 2, add_bias_kv=True)
