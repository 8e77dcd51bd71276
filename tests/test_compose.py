"""Table composition of the retrieved rows: equal to direct encoding, dropout, fallbacks, memory.

The oracle is direct encoding: the layer run on the complete tokens of the retrieved rows (the
indices ``augment`` returns), in float32 as training does and in float64 for the gradients'
exactness.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import vcfstore as vs
from vcfstore.index import IndexSet
from vcfstore.retrieval.compose import Composer, final_dropout_rate, saved_tensor_bytes
from vcfstore.retrieval.layers import ConvEmbedding, PositionwiseEmbedding, VcfBertEmbedding

POS = {"pos": True}


class NormedEmbedding(nn.Module):
    """Another position-wise layer: token and learned position embeddings, a LayerNorm, an AF gate, dropout."""

    def __init__(self, d: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.tok = nn.Embedding(8, d)
        self.pos = nn.Embedding(1030, d)
        self.norm = nn.LayerNorm(d)
        self.gate = nn.Sequential(nn.Linear(1, d), nn.Tanh(), nn.Linear(d, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, tokens: torch.Tensor, af: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm(self.tok(tokens) + self.pos.weight[: tokens.shape[-1]])
        return self.drop(x * (1 + self.gate(af.unsqueeze(-1).to(x.dtype))))


class EarlyDropout(PositionwiseEmbedding):
    """Position-wise, but its dropout acts on the token term only: train mode is not eval mode + dropout."""

    def forward(self, tokens: torch.Tensor, af: torch.Tensor | None = None, pos: bool = True) -> torch.Tensor:
        x = self.dropout(self.token(tokens)) + self.pe[: tokens.shape[-1]]
        return x + self.af_mlp(af.unsqueeze(-1).to(x.dtype))


class PositionDropout(PositionwiseEmbedding):
    """Drops whole positions (all D values at once): kept values are scaled, yet not elementwise dropout."""

    def forward(self, tokens: torch.Tensor, af: torch.Tensor | None = None, pos: bool = True) -> torch.Tensor:
        x = self.token(tokens) + self.pe[: tokens.shape[-1]] + self.af_mlp(af.unsqueeze(-1).to(torch.float32))
        if not self.training:
            return x
        keep = (torch.rand(*x.shape[:-1], 1) >= 0.1).to(x.dtype)
        return x * keep / 0.9


def _layers(d):
    torch.manual_seed(d)
    return {
        "vcfbert": (VcfBertEmbedding(d), POS),
        "positionwise": (PositionwiseEmbedding(d), {}),
        "normed": (NormedEmbedding(d), {}),
    }


def _batch(store, w, rows, mask):
    t = store.window_tokens(w, rows=rows, mask=mask)
    n = len(rows) // 2
    return {
        "hap_1": torch.as_tensor(t[0::2]),
        "hap_2": torch.as_tensor(t[1::2]),
        "af": torch.as_tensor(np.tile(store.window_af(w), (n, 1))),
        "window_idx": torch.full((n,), w),
    }


def _two_windows(store):
    s = vs.MaskSchedule(3)
    b1 = _batch(store, 1, np.arange(8), s.window_mask(store, 1, 0, 0.4))
    b2 = _batch(store, 4, np.arange(20, 26), s.window_mask(store, 4, 0, 0.4))
    order = np.array([0, 4, 1, 5, 2, 6, 3])  # rows of two windows, interleaved: grouping is not required
    return {k: torch.cat([b1[k], b2[k]])[order] for k in b1}


def _direct(layer, store, batch, out, kwargs):
    """The oracle: each retrieved row's complete tokens run through the layer (float32 af, as augment passes it)."""
    result = []
    for h in ("h1", "h2"):
        idx = out[f"rag_idx_{h}"].numpy()
        rows = []
        for b, w in enumerate(batch["window_idx"].tolist()):
            tokens = torch.as_tensor(store.window_tokens(w, rows=idx[b]))
            af = torch.as_tensor(store.window_af(w)).expand(len(tokens), -1)
            rows.append(layer(tokens, af=af, **kwargs))
        result.append(torch.stack(rows))
    return result


def _grads(layer, h1, h2, g1, g2):
    layer.zero_grad()
    ((h1 * g1).sum() + (h2 * g2).sum()).backward()
    return {n: p.grad.detach().clone() for n, p in layer.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("d", [192, 384])
@pytest.mark.parametrize("name", ["vcfbert", "positionwise", "normed"])
def test_composed_rows_and_gradients_equal_direct_encoding(sim_store, name, d):
    layer, kwargs = _layers(d)[name]
    layer.eval()
    batch = _two_windows(sim_store)
    retr = vs.Retriever(sim_store, layer, k=3, backend="exact", forward_kwargs=kwargs)
    out = retr.augment(batch)
    assert retr.compose_plan.compose and retr.compose_plan.reason == "eval mode: no dropout"
    h1, h2 = out["rag_emb_h1"], out["rag_emb_h2"]
    assert h1.shape == (7, 3, 1030, d) and h1.dtype == torch.float32
    assert h1.untyped_storage().data_ptr() != h2.untyped_storage().data_ptr()  # not views of one tensor
    e1, e2 = _direct(layer, sim_store, batch, out, kwargs)
    # forward: the layer's own float32 values (torch's CPU kernels do not depend on the batch shape)
    torch.testing.assert_close(h1, e1, rtol=0, atol=0)
    torch.testing.assert_close(h2, e2, rtol=0, atol=0)
    g1, g2 = torch.randn_like(h1), torch.randn_like(h2)
    got, expect = _grads(layer, h1, h2, g1, g2), _grads(layer, e1, e2, g1, g2)
    assert got.keys() == expect.keys() and len(got) >= 3
    for n in got:  # float32 sums over 42 x 1030 rows in another order: 1e-4 of the largest value
        scale = float(expect[n].abs().max())
        assert float((got[n] - expect[n]).abs().max()) <= 1e-4 * scale + 1e-6, n


@pytest.mark.parametrize("name", ["vcfbert", "normed"])
def test_gradients_are_direct_encodings_in_float64(sim_store, name):
    """In float64 the two gradients agree to 1e-10 relative: the same sums, in another order."""
    layer, kwargs = _layers(16)[name]
    layer = copy.deepcopy(layer).double().eval()
    comp = Composer(layer, kwargs, torch.device("cpu"))
    w, vocab, L = 2, sim_store.vocab, sim_store.max_seq_len
    n_sites, af = len(sim_store.window_sites(w)), sim_store.window_af(w)
    rows = np.random.default_rng(0).integers(0, sim_store.n_haplotypes, 40)
    alleles = np.zeros((40, L), np.uint8)
    alleles[:, 1 : n_sites + 1] = sim_store.window_alleles(w, rows=rows)
    table = comp.table(n_sites, L, vocab, af)
    (got,) = comp.compose([table], [(np.zeros(40, np.int64), alleles)], (40, L, 16), 0.0)
    assert got.dtype == torch.float64
    tokens = torch.as_tensor(sim_store.window_tokens(w, rows=rows))
    expect = layer(tokens, af=torch.as_tensor(af, dtype=torch.float64).expand(40, -1), **kwargs)
    torch.testing.assert_close(got, expect, rtol=1e-12, atol=1e-12)
    g = torch.randn(40, L, 16, dtype=torch.float64)
    layer.zero_grad()
    (got * g).sum().backward()
    a = {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}
    layer.zero_grad()
    (expect * g).sum().backward()
    for n, p in layer.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(a[n], p.grad, rtol=1e-10, atol=1e-10 * float(p.grad.abs().max()))


def test_dropout_verified_and_applied_to_composed_rows(sim_store):
    layer, kwargs = _layers(32)["vcfbert"]
    layer.train()
    batch = _two_windows(sim_store)
    retr = vs.Retriever(sim_store, layer, k=4, backend="exact", forward_kwargs=kwargs)
    state = torch.get_rng_state()
    plan = retr.composer.plan(len(sim_store.window_sites(1)), 1030, sim_store.vocab, sim_store.window_af(1))
    assert torch.equal(torch.get_rng_state(), state)  # the train-mode probe leaves the random stream alone
    assert plan.compose and plan.dropout == 0.1 and plan.reason.startswith("verified: dropout p=0.1")
    out = retr.augment(batch)
    layer.eval()
    e1, e2 = _direct(layer, sim_store, batch, out, kwargs)
    for got, ev in ((out["rag_emb_h1"], e1), (out["rag_emb_h2"], e2)):
        kept = got != 0
        torch.testing.assert_close(got[kept], ev[kept] / 0.9, rtol=1e-6, atol=1e-6)  # kept values scaled
        assert abs(float((~kept).float().mean()) - 0.1) < 0.01  # dropped at rate p, one value at a time


def test_layers_that_fail_the_dropout_check_are_encoded_directly(sim_store):
    batch = _two_windows(sim_store)
    for layer_cls, why in ((EarlyDropout, "not the eval outputs scaled"), (PositionDropout, "whole positions")):
        torch.manual_seed(0)
        layer = layer_cls(8).train()
        retr = vs.Retriever(sim_store, layer, k=2, backend="exact")
        out = retr.augment(batch)
        assert not retr.compose_plan.compose and why in retr.compose_plan.reason
        assert out["rag_emb_h1"].shape == (7, 2, 1030, 8)
        with pytest.raises(vs.NotPositionwiseError, match="compose='always'"):
            vs.Retriever(sim_store, layer, k=2, backend="exact", compose="always").augment(batch)
        declared = vs.Retriever(sim_store, layer, k=2, backend="exact", final_dropout=0.1)
        declared.augment(batch)  # the user's word is taken
        assert declared.compose_plan.compose and declared.compose_plan.reason.startswith("declared")
    with pytest.raises(vs.ArgumentError, match="final_dropout must be a rate"):
        vs.Retriever(sim_store, EarlyDropout(8), final_dropout=1.5)
    with pytest.raises(vs.ArgumentError, match="compose must be one of"):
        vs.Retriever(sim_store, EarlyDropout(8), compose="yes")


def test_final_dropout_rate_estimates_p_without_a_dropout_module():
    torch.manual_seed(0)
    x = torch.randn(3, 50, 64)

    class Functional(nn.Module):
        def forward(self) -> torch.Tensor:
            return torch.nn.functional.dropout(x * 2, 0.25, training=self.training)

    m = Functional()
    p, how = final_dropout_rate(m, m)
    assert p == pytest.approx(0.25, abs=1e-6) and "from the scale" in how
    assert final_dropout_rate(lambda: x, lambda: x)[0] == 0.0  # a deterministic callable
    assert final_dropout_rate(lambda: x, lambda: torch.nn.functional.dropout(x, 0.5))[0] is None


def test_non_positionwise_layer_keeps_direct_encoding(sim_store, tmp_path):
    torch.manual_seed(0)
    conv = ConvEmbedding(4).eval()
    masks = vs.MaskSchedule(1).at(sim_store, 0, 0.3)
    iset = IndexSet.build(sim_store, conv, tmp_path / "ix", masks, windows=[0], progress=False)
    batch = _batch(sim_store, 0, np.arange(8), masks[0])
    retr = vs.Retriever(sim_store, conv, k=2, backend="faiss", index_set=iset)
    out = retr.augment(batch)
    assert not retr.compose_plan.compose and retr.compose_plan.reason == "the layer is not position-wise"
    e1, e2 = _direct(conv, sim_store, batch, out, {})
    torch.testing.assert_close(out["rag_emb_h1"], e1)
    torch.testing.assert_close(out["rag_emb_h2"], e2)
    with pytest.raises(vs.NotPositionwiseError, match="not position-wise"):
        vs.Retriever(sim_store, conv, k=2, backend="faiss", index_set=iset, compose="always").augment(batch)


@pytest.mark.parametrize("train", [False, True])
def test_autograd_keeps_far_fewer_bytes_when_composing(sim_store, train):
    layer, kwargs = _layers(64)["vcfbert"]
    layer.train(train)
    batch = _batch(sim_store, 2, np.arange(48), vs.MaskSchedule(3).window_mask(sim_store, 2, 0, 0.3))
    saved = {}
    for mode in ("auto", "never"):
        retr = vs.Retriever(sim_store, layer, k=8, backend="exact", forward_kwargs=kwargs, compose=mode)
        retr.augment(batch)  # decide the plan (its probes save nothing in the block below)
        with saved_tensor_bytes(layer) as n:
            out = retr.augment(batch)
        saved[mode] = n[0]
        assert retr.compose_plan.compose == (mode == "auto")
    unique = len(np.unique(torch.cat([out["rag_idx_h1"], out["rag_idx_h2"]]).numpy()))
    per_row = saved["never"] / unique  # direct: the layer's activations for every unique retrieved row
    assert per_row > 1030 * 64 * 4 * 3  # several floats a value (the AF MLP's)
    positions = 2 * 24 * 8 * 1030
    # composed: the table's graph (3 rows), a byte a position, and in train mode dropout's byte a value
    assert saved["auto"] <= 3.5 * per_row + positions * (1.1 + (64 if train else 0))
    assert saved["auto"] <= (0.25 if train else 0.05) * saved["never"]


def test_budget_admits_search_and_embeddings_before_they_are_made(sim_store, monkeypatch):
    budget = vs.MemoryBudget("4GB")
    calls = []
    real = budget.reserve

    def spy(nbytes, what="", **kw):
        calls.append((int(nbytes), what, kw.get("kind", "anon")))
        return real(nbytes, what, **kw)

    monkeypatch.setattr(budget, "reserve", spy)
    layer, kwargs = _layers(32)["vcfbert"]
    layer.eval()
    batch = _batch(sim_store, 2, np.arange(16), vs.MaskSchedule(3).window_mask(sim_store, 2, 0, 0.3))
    retr = vs.Retriever(sim_store, layer, k=4, backend="exact", forward_kwargs=kwargs, budget=budget)
    out = retr.augment(batch)
    searches = [c for c in calls if c[1] == "the exact search of window 2"]
    embeds = [c for c in calls if c[1].startswith("the retrieved embeddings of 8 rows")]
    assert len(searches) == 1 and searches[0][0] >= 16 * sim_store.n_haplotypes * 8
    output = 2 * out["rag_emb_h1"].numel() * 4
    assert len(embeds) == 1 and output <= embeds[0][0] < 1.2 * output  # fresh buffers, and their graph
    del out
    calls.clear()
    retr.augment(batch)  # the buffers are free again: only the graph's bytes are new
    (embed,) = [c for c in calls if c[1].startswith("the retrieved embeddings")]
    assert embed[0] < 0.01 * output
    # direct encoding: the layer's graph, estimated from two probes, is admitted too
    calls.clear()
    direct = vs.Retriever(sim_store, layer, k=4, backend="exact", forward_kwargs=kwargs, budget=budget, compose="never")
    with saved_tensor_bytes(layer) as n:
        direct.augment(batch)
    (enc,) = [c for c in calls if c[1].startswith("encoding")]
    rows_bytes = int(enc[1].split()[1]) * 1030 * 32 * 4
    assert 0.8 * n[0] <= enc[0] - rows_bytes <= 1.25 * n[0]


def test_output_buffer_is_reused_only_once_released(sim_store):
    layer, kwargs = _layers(8)["vcfbert"]
    layer.eval()
    s = vs.MaskSchedule(3)
    b1 = _batch(sim_store, 2, np.arange(8), s.window_mask(sim_store, 2, 0, 0.3))
    b2 = _batch(sim_store, 3, np.arange(8, 16), s.window_mask(sim_store, 3, 0, 0.3))
    retr = vs.Retriever(sim_store, layer, k=2, backend="exact", forward_kwargs=kwargs)
    kept = retr.augment(b1)["rag_emb_h1"]
    copy_of_kept = kept.clone()
    second = retr.augment(b2)["rag_emb_h1"]
    assert second.data_ptr() != kept.data_ptr() and torch.equal(kept, copy_of_kept)  # still held: not reused
    ptr = second.data_ptr()
    loss = (second * second).sum()  # the graph holds the rows until backward
    third = retr.augment(b1)["rag_emb_h1"]
    assert third.data_ptr() != ptr
    loss.backward()
    del loss, second, third, kept
    fourth = retr.augment(b2)["rag_emb_h1"]
    fifth_ptr = fourth.data_ptr()
    del fourth
    assert retr.augment(b1)["rag_emb_h1"].data_ptr() == fifth_ptr  # nothing holds it: reused
