"""Tests of megengine/functional/attention.py: multi_head_attention against torch's
multi_head_attention_forward (values, attention weights and gradients), upstream's packed layout."""
import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import megengine as mge
import megengine.functional as F
from megengine.autodiff import GradManager


def randn(*shape):
    return np.random.randn(*shape).astype(np.float32)


def pack(wq, wk, wv, wo, biases):
    """Upstream's io_weight_bias: the (in, out) weights, then the biases, flattened into (1, -1)."""
    parts = [w.reshape(-1) for w in (wq, wk, wv, wo)] + [b.reshape(-1) for b in biases]
    return np.concatenate(parts)[None, :]


def torch_mha(q, k, v, heads, wq, wk, wv, wo, biases, **kw):
    """torch's functional MHA on upstream's weights: torch uses x @ W.T, upstream x @ W."""
    e = wq.shape[1]
    bias = torch.cat(biases[:3]) if biases else None
    same_dims = wk.shape[0] == e and wv.shape[0] == e
    out, weights = TF.multi_head_attention_forward(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), e, heads,
        torch.cat([wq.T, wk.T, wv.T]) if same_dims else None, bias, None, None, False, 0.0,
        wo.T, biases[3] if biases else None, training=False,
        use_separate_proj_weight=not same_dims, q_proj_weight=wq.T, k_proj_weight=wk.T,
        v_proj_weight=wv.T, **kw)
    return out.transpose(0, 1), weights


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kdim,vdim", [(None, None), (3, 5)])
def test_multi_head_attention_matches_torch(bias, kdim, vdim):
    n, lq, lk, e, heads = 2, 3, 4, 6, 2
    kdim, vdim = kdim or e, vdim or e
    q, k, v = randn(n, lq, e), randn(n, lk, kdim), randn(n, lk, vdim)
    ws = [randn(e, e), randn(kdim, e), randn(vdim, e), randn(e, e)]
    bs = [randn(e) for _ in range(4)] if bias else []
    io = pack(*ws, bs)

    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    tws = [torch.tensor(w, requires_grad=True) for w in ws]
    tbs = [torch.tensor(b, requires_grad=True) for b in bs]
    t_out, t_w = torch_mha(tq, tk, tv, heads, *tws, tbs, need_weights=True,
                           average_attn_weights=False)

    mq, mk, mv, mio = (mge.tensor(a) for a in (q, k, v, io))
    gm = GradManager().attach([mq, mk, mv, mio])
    dy = randn(n, lq, e)
    with gm:
        out, weights = F.nn.multi_head_attention(
            mq, mk, mv, e, heads, 0.0, 0.0, mio, qbias=bias, kbias=bias, vbias=bias,
            obias=bias, need_weights=True, training=False)
        gm.backward(out, mge.tensor(dy))
    np.testing.assert_allclose(out.numpy(), t_out.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(weights.numpy(), t_w.detach().numpy().reshape(n * heads, lq, lk),
                               rtol=1e-4, atol=1e-6)
    t_out.backward(torch.tensor(dy))
    for got, want in zip((mq, mk, mv), (tq, tk, tv)):
        np.testing.assert_allclose(got.grad.numpy(), want.grad.numpy(), rtol=1e-4, atol=1e-5)
    want_io = pack(*[w.grad.numpy() for w in tws], [b.grad.numpy() for b in tbs])
    np.testing.assert_allclose(mio.grad.numpy(), want_io, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("masks", ["bool_attn", "float_attn_3d", "padding", "both", "causal"])
def test_multi_head_attention_masks_match_torch(masks):
    n, lq, e, heads = 2, 4, 4, 2
    q = randn(n, lq, e)
    ws = [randn(e, e) for _ in range(4)]
    kw = {}
    if masks in ("bool_attn", "both"):
        kw["attn_mask"] = np.random.rand(lq, lq) > 0.7
        np.fill_diagonal(kw["attn_mask"], False)  # every query keeps a key
    if masks == "float_attn_3d":
        kw["attn_mask"] = randn(n * heads, lq, lq)
    if masks in ("padding", "both"):
        kw["key_padding_mask"] = np.array([[False, False, True, False], [False, True, False,
                                                                         False]])
    causal = masks == "causal"
    t_out, t_w = torch_mha(*(torch.tensor(q),) * 3, heads, *map(torch.tensor, ws), [],
                           need_weights=True, average_attn_weights=True, is_causal=causal,
                           attn_mask=torch.ones(lq, lq, dtype=torch.bool).triu(1) if causal
                           else (torch.tensor(kw["attn_mask"]) if "attn_mask" in kw else None),
                           key_padding_mask=torch.tensor(kw["key_padding_mask"])
                           if "key_padding_mask" in kw else None)
    x = mge.tensor(q)
    out, weights = F.nn.multi_head_attention(
        x, x, x, e, heads, 0.0, 0.0, mge.tensor(pack(*ws, [])), need_weights=True,
        average_attn_weights=True, is_causal=causal, training=False,
        **{k: mge.tensor(v) for k, v in kw.items()})
    np.testing.assert_allclose(out.numpy(), t_out.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(weights.numpy(), t_w.numpy(), rtol=1e-4, atol=1e-6)


def test_multi_head_attention_dropout_only_in_training():
    e, heads = 4, 2
    x = mge.tensor(randn(2, 3, e))
    io = mge.tensor(pack(*[randn(e, e) for _ in range(4)], []))
    eval_a, _ = F.nn.multi_head_attention(x, x, x, e, heads, 0.5, 0.5, io, training=False)
    eval_b, _ = F.nn.multi_head_attention(x, x, x, e, heads, 0.0, 0.0, io, training=True)
    np.testing.assert_allclose(eval_a.numpy(), eval_b.numpy(), rtol=1e-6)
    train, _ = F.nn.multi_head_attention(x, x, x, e, heads, 0.0, 0.5, io, training=True)
    kept = train.numpy() != 0
    assert 0 < kept.mean() < 1  # output dropout zeroes some and scales the rest by 2
    np.testing.assert_allclose(train.numpy()[kept], 2 * eval_a.numpy()[kept], rtol=1e-5)


def test_multi_head_attention_bad_input_is_named():
    e, heads = 4, 2
    x = mge.tensor(randn(2, 3, e))
    io = mge.tensor(pack(*[randn(e, e) for _ in range(4)], []))
    with pytest.raises(RuntimeError, match="io_weight_bias holds"):  # (a ValueError too)
        F.nn.multi_head_attention(x, x, x, e, heads, 0.0, 0.0, io, qbias=True)
    with pytest.raises(ValueError, match="query lengths \\[2, 3\\] shorter"):
        F.nn.multi_head_attention(x, x, x, e, heads, 0.0, 0.0, io, maybe_cudnn_style_mask=True,
                                  key_padding_mask=mge.tensor(np.array([[2, 3], [3, 3]])))
    with pytest.raises(ValueError, match="bias_k and bias_v come together"):
        F.nn.multi_head_attention(x, x, x, e, heads, 0.0, 0.0, io,
                                  bias_k=mge.tensor(randn(1, 1, e)))
    with pytest.raises(ValueError, match="bias_v must hold one value per projected width"):
        F.nn.multi_head_attention(x, x, x, e, heads, 0.0, 0.0, io,
                                  bias_k=mge.tensor(randn(1, 1, e)),
                                  bias_v=mge.tensor(randn(1, 1, e + 1)))
    with pytest.raises(ValueError, match=r"key_padding_mask must be \(N, S\)"):
        F.nn.multi_head_attention(x, x, x, e, heads, 0.0, 0.0, io,
                                  key_padding_mask=mge.tensor(np.zeros((3, 3), bool)))


@pytest.mark.parametrize("bias_kv,zero_attn", [(True, False), (False, True), (True, True)])
@pytest.mark.parametrize("masks", [None, "attn_and_padding", "causal"])
def test_extra_keys_bias_kv_and_zero_attn_match_torch(bias_kv, zero_attn, masks):
    # upstream 1.13's test_functional_torch checks bias_k/bias_v and add_zero_attn against torch
    n, lq, lk, e, heads = 2, 3, 4, 6, 2
    q, k, v = randn(n, lq, e), randn(n, lk, e), randn(n, lk, e)
    ws = [randn(e, e) for _ in range(4)]
    bs = [randn(e) for _ in range(4)]
    bk, bv = randn(1, 1, e), randn(1, 1, e)
    attn = np.random.rand(lq, lk) > 0.7 if masks == "attn_and_padding" else None
    if attn is not None:
        attn[:, 0] = False  # every query keeps a key
    pad = np.array([[False, False, True, False], [False, True, False, True]]) \
        if masks == "attn_and_padding" else None
    causal = masks == "causal"
    if causal:
        attn = np.triu(np.ones((lq, lk), bool), 1)

    tq, tk, tv, tbk, tbv = (torch.tensor(a, requires_grad=True) for a in (q, k, v, bk, bv))
    tws = [torch.tensor(w, requires_grad=True) for w in ws]
    tbs = [torch.tensor(b, requires_grad=True) for b in bs]
    t_out, t_w = TF.multi_head_attention_forward(
        tq.transpose(0, 1), tk.transpose(0, 1), tv.transpose(0, 1), e, heads,
        torch.cat([w.T for w in tws[:3]]), torch.cat(tbs[:3]),
        tbk if bias_kv else None, tbv if bias_kv else None, zero_attn, 0.0, tws[3].T, tbs[3],
        training=False, need_weights=True, average_attn_weights=False,
        attn_mask=None if attn is None else torch.tensor(attn),
        key_padding_mask=None if pad is None else torch.tensor(pad))
    t_out = t_out.transpose(0, 1)

    mq, mk, mv, mbk, mbv = (mge.tensor(a) for a in (q, k, v, bk, bv))
    mio = mge.tensor(pack(*ws, bs))
    gm = GradManager().attach([mq, mk, mv, mio] + ([mbk, mbv] if bias_kv else []))
    dy = randn(n, lq, e)
    with gm:
        out, weights = F.nn.multi_head_attention(
            mq, mk, mv, e, heads, 0.0, 0.0, mio, qbias=True, kbias=True, vbias=True,
            obias=True, bias_k=mbk if bias_kv else None, bias_v=mbv if bias_kv else None,
            add_zero_attn=zero_attn, is_causal=causal,
            attn_mask=None if attn is None or causal else mge.tensor(attn),
            key_padding_mask=None if pad is None else mge.tensor(pad),
            need_weights=True, training=False)
        gm.backward(out, mge.tensor(dy))
    extra = int(bias_kv) + int(zero_attn)
    assert weights.shape == (n * heads, lq, lk + extra)
    np.testing.assert_allclose(out.numpy(), t_out.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(weights.numpy(), t_w.detach().numpy().reshape(weights.shape),
                               rtol=1e-4, atol=1e-6)
    t_out.backward(torch.tensor(dy))
    got = [mq, mk, mv] + ([mbk, mbv] if bias_kv else [])
    want = [tq, tk, tv] + ([tbk, tbv] if bias_kv else [])
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.grad.numpy(), w.grad.numpy(), rtol=1e-4, atol=1e-5)
    want_io = pack(*[w.grad.numpy() for w in tws], [b.grad.numpy() for b in tbs])
    np.testing.assert_allclose(mio.grad.numpy(), want_io, rtol=1e-4, atol=1e-5)


def _reference_unprojected(q, k, v, heads, wq, wk, wv, wo, embed_dim, reslink):
    """Upstream's reference (its 1.13 test's `_run_naive`), in torch for its gradients: a
    projected input is split between the heads, an unprojected one (weight None) repeated for
    every head; scale 1/sqrt(embed_dim) unprojected, 1/sqrt(embed_dim // heads) projected."""
    def per_head(x, w):
        n, t, _ = x.shape
        if w is None:
            return x.unsqueeze(1).expand(n, heads, t, x.shape[-1])
        y = x @ w
        return y.reshape(n, t, heads, -1).transpose(1, 2)

    nq, nk, nv = per_head(q, wq), per_head(k, wk), per_head(v, wv)
    d = embed_dim if wq is None else embed_dim // heads
    probs = torch.softmax(nq @ nk.transpose(-1, -2) / np.sqrt(d), dim=-1)
    z = (probs @ nv).transpose(1, 2).reshape(q.shape[0], q.shape[1], -1)
    out = z if wo is None else z @ wo
    return out + q if reslink else out


@pytest.mark.parametrize("unprojected", ["q_and_k", "v", "v_and_o", "none"])
@pytest.mark.parametrize("reslink", [False, True])
def test_unprojected_inputs_are_repeated_per_head_and_reslink_adds_the_query(unprojected,
                                                                            reslink):
    n, lq, lk, e, heads = 2, 3, 4, 4, 2
    q, k, v = randn(n, lq, e), randn(n, lk, e), randn(n, lk, e)
    sizes = {"q": e, "k": e, "v": e, "o": e}
    if unprojected == "q_and_k":
        sizes["q"] = sizes["k"] = 0
    elif unprojected == "v":
        sizes["v"] = 0
    elif unprojected == "v_and_o":
        sizes["v"] = sizes["o"] = 0
    o_in = sizes["v"] or e * heads  # the heads' outputs join to heads * vdim unprojected
    if reslink and sizes["o"] == 0 and o_in != e:
        pytest.skip("reslink needs the output as wide as the query")
    ws = {name: randn(i, o) if o else None
          for name, i, o in (("q", e, sizes["q"]), ("k", e, sizes["k"]), ("v", e, sizes["v"]),
                             ("o", o_in, sizes["o"]))}
    io = np.concatenate([w.reshape(-1) for w in ws.values() if w is not None])[None, :]

    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    tws = {name: None if w is None else torch.tensor(w) for name, w in ws.items()}
    t_out = _reference_unprojected(tq, tk, tv, heads, tws["q"], tws["k"], tws["v"], tws["o"],
                                   e, reslink)
    mq, mk, mv = (mge.tensor(a) for a in (q, k, v))
    gm = GradManager().attach([mq, mk, mv])
    dy = randn(*t_out.shape)
    with gm:
        out, _ = F.nn.multi_head_attention(
            mq, mk, mv, e, heads, 0.0, 0.0, mge.tensor(io), qproj_size=sizes["q"],
            kproj_size=sizes["k"], vproj_size=sizes["v"], oproj_size=sizes["o"],
            reslink=reslink, training=False)
        gm.backward(out, mge.tensor(dy))
    assert out.shape == tuple(t_out.shape)
    np.testing.assert_allclose(out.numpy(), t_out.detach().numpy(), rtol=1e-4, atol=1e-5)
    t_out.backward(torch.tensor(dy))
    for got, want in zip((mq, mk, mv), (tq, tk, tv)):
        np.testing.assert_allclose(got.grad.numpy(), want.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_an_io_weight_bias_holding_no_values_gets_an_empty_gradient():
    # no projection and no bias: upstream's op still takes the packed tensor as an input, so
    # an attached one gets a gradient of its own (empty) shape, and the output is plain attention
    n, lq, lk, e, heads = 2, 3, 4, 4, 2
    q, k, v = randn(n, lq, e), randn(n, lk, e), randn(n, lk, e)
    t_out = _reference_unprojected(*(torch.tensor(a) for a in (q, k, v)), heads, None, None,
                                   None, None, e, False)
    mq, io = mge.tensor(q), mge.tensor(np.zeros((1, 0), np.float32))
    gm = GradManager().attach([mq, io])
    with gm:
        out, _ = F.nn.multi_head_attention(mq, mge.tensor(k), mge.tensor(v), e, heads, 0.0, 0.0,
                                           io, 0, 0, 0, 0, training=False)
        gm.backward(out.sum())
    np.testing.assert_allclose(out.numpy(), t_out.numpy(), rtol=1e-4, atol=1e-5)
    assert io.grad is not None and io.grad.shape == (1, 0)
    assert mq.grad is not None


def test_float16_attention_is_rounded_once():
    # composed of float16 steps that each rounded, the output was up to 1.8e-3 of its largest
    # value off the exact one (torch in float64 on the same float16 values; --float16 fuzz case
    # 51311: 2.5x torch's float16 error); computed in float32, it is within one float16 ulp
    rs = np.random.RandomState(0)
    n, lq, lk, e, heads = 2, 3, 4, 8, 2
    for _ in range(4):
        q, k, v = (rs.randn(n, length, e).astype(np.float16) for length in (lq, lk, lk))
        ws = [rs.randn(e, e).astype(np.float16) for _ in range(4)]
        bs = [rs.randn(e).astype(np.float16) for _ in range(4)]
        ins = [mge.tensor(a) for a in (q, k, v, pack(*ws, bs))]
        gm = GradManager().attach(ins)
        with gm:
            out, weights = F.nn.multi_head_attention(
                *ins[:3], e, heads, 0.0, 0.0, ins[3], qbias=True, kbias=True, vbias=True,
                obias=True, need_weights=True, training=False)
            gm.backward(out.sum())
        assert out.dtype == weights.dtype == np.float16
        assert all(t.grad.dtype == np.float16 for t in ins)
        t64 = [torch.tensor(a, dtype=torch.float64) for a in (q, k, v)]
        exact, _ = torch_mha(*t64, heads, *(torch.tensor(w, dtype=torch.float64) for w in ws),
                             [torch.tensor(b, dtype=torch.float64) for b in bs])
        exact = exact.numpy()
        ulp = np.spacing(np.float16(np.abs(exact).max())).astype(np.float64)
        assert np.abs(out.numpy() - exact).max() <= ulp


def test_an_io_weight_bias_holding_no_values_keeps_the_outputs_dtype():
    # the empty packed tensor (float32, as M.MultiHeadAttention makes it) takes no part in the
    # values: a float16 attention stays float16, the same values as without io_weight_bias
    n, lq, lk, e, heads = 2, 3, 4, 4, 2
    q, k, v = (mge.tensor(randn(n, length, e).astype(np.float16)) for length in (lq, lk, lk))
    io = mge.tensor(np.zeros((1, 0), np.float32))
    gm = GradManager().attach([io])
    with gm:
        out, _ = F.nn.multi_head_attention(q, k, v, e, heads, 0.0, 0.0, io, 0, 0, 0, 0,
                                           training=False)
        gm.backward(out.sum())
    plain, _ = F.nn.multi_head_attention(q, k, v, e, heads, 0.0, 0.0, None, 0, 0, 0, 0,
                                         training=False)
    assert plain.dtype == np.float16 and out.dtype == np.float16
    np.testing.assert_array_equal(out.numpy(), plain.numpy())
    assert io.grad.shape == (1, 0)


def test_reslink_needs_matching_shapes():
    e, heads = 4, 2
    x = mge.tensor(randn(2, 3, e))
    io = mge.tensor(pack(randn(e, e), randn(e, e), randn(e, e), randn(e, 6), []))
    with pytest.raises(ValueError, match="reslink adds the query"):
        F.nn.multi_head_attention(x, x, x, e, heads, 0.0, 0.0, io, oproj_size=6, reslink=True)


@pytest.mark.parametrize("causal,padded", [(True, False), (False, True), (True, True)])
def test_cudnn_style_masks_are_key_ranges_and_lengths(causal, padded):
    # upstream 1.13's test builds them so: attn_mask (2, L) = [0, i + 1) per query i (causal)
    # or [0, S); key_padding_mask (2, N) = (query lengths, key lengths)
    n, lq, e, heads = 2, 4, 4, 2
    q = randn(n, lq, e)
    ws = [randn(e, e) for _ in range(4)]
    ranges = np.stack([np.zeros(lq, int), np.arange(1, lq + 1) if causal else np.full(lq, lq)])
    k_lengths = np.array([lq, 2]) if padded else np.array([lq, lq])
    lengths = np.stack([np.full(n, lq), k_lengths])
    keys = np.arange(lq)
    t_out, t_w = torch_mha(*(torch.tensor(q),) * 3, heads, *map(torch.tensor, ws), [],
                           need_weights=True, average_attn_weights=False,
                           attn_mask=torch.tensor(np.triu(np.ones((lq, lq), bool), 1))
                           if causal else None,
                           key_padding_mask=torch.tensor(keys[None, :] >= k_lengths[:, None]))
    x = mge.tensor(q)
    out, weights = F.nn.multi_head_attention(
        x, x, x, e, heads, 0.0, 0.0, mge.tensor(pack(*ws, [])), need_weights=True,
        attn_mask=mge.tensor(ranges), key_padding_mask=mge.tensor(lengths),
        maybe_cudnn_style_mask=True, training=False)
    np.testing.assert_allclose(out.numpy(), t_out.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(weights.numpy(), t_w.numpy().reshape(n * heads, lq, lq),
                               rtol=1e-4, atol=1e-6)


def test_packed_pieces_take_their_gradients_in_place_and_unused_ones_zero():
    # the projections' weights come out of io_weight_bias transposed, as linear's (out, in):
    # a gradient of one piece lands in that piece's place, in the packed (in, out) layout
    from megengine.functional.attention import _split_io_weight_bias

    e, kdim = 4, 3
    io = mge.Parameter(np.arange(e * e + kdim * e + e * e + e * e + 2 * e, dtype=np.float32)[None])
    gm = GradManager().attach(io)
    c = randn(e, kdim)
    with gm:
        (wq, wk, wv, wo), (bq, bk, bv, bo) = _split_io_weight_bias(
            io, [(e, e), (kdim, e), (e, e), (e, e)], [True, False, False, True])
        assert wk.shape == (e, kdim) and bk is None and bo.shape == (e,)
        np.testing.assert_array_equal(wk.numpy(), io.numpy()[0, e * e:e * e + kdim * e]
                                      .reshape(kdim, e).T)
        gm.backward((wk * mge.tensor(c)).sum() + bo.sum() * 2)
    want = np.zeros(io.shape[1], np.float32)
    want[e * e:e * e + kdim * e] = c.T.reshape(-1)
    want[-e:] = 2
    np.testing.assert_array_equal(io.grad.numpy()[0], want)


def test_multi_head_attention_second_order_matches_torch():
    # a gradient penalty through the packed parameter: the unpacking and the projections'
    # gradients are themselves differentiated
    n, l, e, heads = 2, 3, 4, 2
    x, dy = randn(n, l, e), randn(n, l, e)
    ws, bs = [randn(e, e) for _ in range(4)], [randn(e) for _ in range(4)]
    io = pack(*ws, bs)
    mx, mio = mge.Parameter(x), mge.Parameter(io)
    outer, inner = GradManager().attach([mio]), GradManager().attach([mx])
    with outer:
        with inner:
            out, _ = F.nn.multi_head_attention(mx, mx, mx, e, heads, 0.0, 0.0, mio, qbias=True,
                                               kbias=True, vbias=True, obias=True, training=False)
            inner.backward(out, mge.tensor(dy))
        outer.backward((mx.grad * mx.grad).sum())
    tx = torch.tensor(x, requires_grad=True)
    tws = [torch.tensor(w, requires_grad=True) for w in ws]
    tbs = [torch.tensor(b, requires_grad=True) for b in bs]
    t_out, _ = torch_mha(tx, tx, tx, heads, *tws, tbs, need_weights=True)  # (no fused kernel)
    (gx,) = torch.autograd.grad(t_out, tx, torch.tensor(dy), create_graph=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(tws + tbs, torch.autograd.grad(
        (gx * gx).sum(), tws + tbs, allow_unused=True))]  # (the output bias: none)
    want = pack(*[g.numpy() for g in grads[:4]], [g.numpy() for g in grads[4:]])
    np.testing.assert_allclose(mx.grad.numpy(), gx.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(mio.grad.numpy(), want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    # (atol: the key bias has no effect on the output, its exact gradients are 0, and float32
    # leaves both sides a rounding residue of the 1e3-sized terms)


def test_a_dumped_attention_is_made_of_upstreams_graph_ops_and_runs_at_other_shapes():
    """Eagerly the heads are regrouped and the packed weights unpacked by one op each; a dump
    writes them as the Reshape, Dimshuffle and Split operators upstream's tools (network_node,
    mgeconvert) read, and the loaded file gives the eager values at another batch and length."""
    import io

    import megengine.module as M
    import megengine.utils.comp_graph_tools as cgtools
    from megengine.jit import trace
    from megengine.utils.network import Network

    m = M.MultiHeadAttention(16, 4, bias=True)
    m.eval()
    f = trace(lambda x: m(x, x, x)[0], symbolic=True, capture_as_const=True)
    rng = np.random.default_rng(0)
    f(mge.tensor(rng.random((2, 5, 16), dtype=np.float32)))
    file = io.BytesIO()
    f.dump(file, arg_names=["x"], optimize_for_inference=False)
    file.seek(0)
    types = {o.type for o in Network.load(file).all_oprs}
    assert {"Reshape", "Dimshuffle", "Split"} <= types
    assert types <= {"Host2DeviceCopy", "ImmutableTensor", "Split", "Reshape", "Dimshuffle",
                     "MatrixMul", "BatchedMatmul", "Elemwise", "Softmax"}
    file.seek(0)
    x = rng.random((3, 7, 16), dtype=np.float32)
    got, = cgtools.GraphInference(file).run(x).values()
    np.testing.assert_allclose(got, m(mge.tensor(x), mge.tensor(x), mge.tensor(x))[0].numpy(),
                               rtol=1e-5, atol=1e-6)
