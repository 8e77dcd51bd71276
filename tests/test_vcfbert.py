"""The VCF-Bert drop-in: items, masks, samplers, retrieval and imputation against direct re-computations.

The oracles read the VCF text, the .panel file, freq.npy and the segments CSV directly and
follow VCF-Bert's recipes as its code does them (global NumPy/Python RNGs included), never
through vcfstore's readers.
"""

from __future__ import annotations

import csv
import gzip
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import vcfstore.vcfbert as vb
from tests.helpers import write_vcf
from vcfstore.errors import ArgumentError, InputError, InputWarning
from vcfstore.memory.budget import MemoryBudget
from vcfstore.store.masks import MaskSchedule

L = 1030
N_RECORDS = 300
SUPER_POPS = ["EUR", "AFR", "EAS", "SAS"]  # sorted: AFR, EAS, EUR, SAS, then Global
WINDOWS = [(0, 80), (70, 150), (150, 262), (262, 300)]  # VCF-Bert accepts overlapping windows


# --- a VCF-Bert-style embedding layer (token + sinusoidal position + AF basis MLP, then dropout) ---
class BertStyleEmbedding(nn.Module):
    def __init__(self, vocab_size: int = 12, embed_size: int = 16, dropout: float = 0.0) -> None:
        super().__init__()
        self.tokenizer = nn.Embedding(vocab_size, embed_size, padding_idx=0)
        p = torch.arange(L, dtype=torch.float32)[:, None]
        w = torch.exp(-torch.arange(0, embed_size, 2, dtype=torch.float32) * math.log(10000.0) / embed_size)
        pe = torch.zeros(L, embed_size)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(p * w), torch.cos(p * w)
        self.register_buffer("pe", pe[None])
        self.basis_freqs = nn.Parameter(torch.logspace(0, 2, 32))
        self.projection = nn.Sequential(
            nn.Linear(64, embed_size), nn.LayerNorm(embed_size), nn.GELU(), nn.Linear(embed_size, embed_size)
        )
        self.embed_size = embed_size
        self.dropout = nn.Dropout(dropout)

    def forward(self, seq: torch.Tensor, af: torch.Tensor | None = None, pos: bool = False) -> torch.Tensor:
        out = self.tokenizer(seq)
        if pos:
            out = out + self.pe[:, : seq.size(1)]
        if af is not None:
            x = af[..., None] * self.basis_freqs
            out = out + self.projection(torch.cat([torch.sin(2 * math.pi * x), torch.cos(2 * math.pi * x)], -1))
        return self.dropout(out)


# --- the files of a VCF-Bert run ------------------------------------------------------------------
def _records(n_samples: int, seed: int) -> list[tuple]:
    """Records with multiallelic sites (collapsed), indels (kept) and two records at one position."""
    rng = np.random.default_rng(seed)
    steps = np.random.default_rng(99).integers(1, 400, N_RECORDS)  # the same sites in every file
    steps[41] = 0  # records 40 and 41 share a position
    out = []
    for i, pos in enumerate((10_000 + np.cumsum(steps)).tolist()):
        ref, alt = ("A", "C,T") if i % 13 == 5 else (("A", "AT") if i % 17 == 3 else ("A", "T" if i == 41 else "G"))
        n_alt = alt.count(",") + 1
        freq = 0.01 if i % 5 == 0 else 0.3  # some rare sites
        gts = [
            "|".join(str(int(rng.integers(1, n_alt + 1)) if rng.random() < freq else 0) for _ in range(2))
            for _ in range(n_samples)
        ]
        out.append(("chr21", pos, f"rs{i}", ref, alt, gts))
    return out


def _parse_vcf(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(samples, positions, GT int [records, samples, 2]) with VCF-Bert's GT[GT > 0] = 1."""
    samples, pos, gt = [], [], []
    with gzip.open(path, "rt") as f:
        for line in f:
            if line.startswith("##"):
                continue
            fields = line.rstrip("\n").split("\t")
            if line.startswith("#"):
                samples = fields[9:]
                continue
            pos.append(int(fields[1]))
            gt.append([[int(a) for a in g.split("|")] for g in fields[9:]])
    g = np.asarray(gt)
    g[g > 0] = 1
    return samples, np.asarray(pos), g


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("vcfbert")
    train_samples = [f"T{i}" for i in range(10)]
    ref_samples = [f"R{i}" for i in range(20)]
    write_vcf(d / "train.vcf.gz", _records(len(train_samples), 1), train_samples)
    write_vcf(d / "ref.vcf.gz", _records(len(ref_samples), 2), ref_samples)
    everyone = train_samples + ref_samples
    vb.write_panel_file(
        d / "all.panel", everyone, ["POP"] * len(everyone), [SUPER_POPS[i % 4] for i in range(len(everyone))]
    )
    rng = np.random.default_rng(3)
    freq = rng.random((4, 5, N_RECORDS)).astype(np.float32)
    freq[3, -1, ::4] *= 0.04  # rare in the global AF: masked at 0.7
    vb.write_frequency_table(d / "freq.npy", freq)
    vb.write_segments_csv(d / "segments.csv", np.asarray(WINDOWS))
    return {"dir": d, "train": d / "train.vcf.gz", "ref": d / "ref.vcf.gz", "panel": d / "all.panel"} | {
        "freq": d / "freq.npy",
        "csv": d / "segments.csv",
    }


@pytest.fixture(scope="module")
def stores(files) -> vb.VcfBertStores:
    return vb.build_stores(
        files["dir"] / "stores",
        training=files["train"],
        reference=files["ref"],
        panel=files["panel"],
        frequencies=files["freq"],
        windows=files["csv"],
        progress=False,
    )


def _vcfbert_mask(af: np.ndarray, seed: int, w: int, rate: float, off_by_one: bool = False) -> np.ndarray:
    """VCF-Bert's recipe with its global NumPy RNG (state restored for the other tests)."""
    padded = np.concatenate([[0.0], af, np.zeros(L - len(af) - 1)])
    af_data = padded[: len(af)] if off_by_one else af
    probs = np.where(af_data < 0.05, 0.7, rate)
    state = np.random.get_state()
    np.random.seed(seed * 10000 + w)
    raw = (np.random.random(len(af)) < probs).astype(int)
    np.random.set_state(state)
    return raw


def _expected_item(files, s: int, w: int, raw_mask: np.ndarray) -> dict[str, np.ndarray]:
    """Every key of one VCF-Bert item, re-computed from the files as VCF-Bert's code does."""
    _, positions, gt = _parse_vcf(files["train"])
    with open(files["csv"]) as f:
        start, end = (int(x) for x in list(csv.reader(f))[1:][w][:2])
    with open(files["panel"]) as f:
        lines = [line.split() for line in f.read().splitlines()[1:]]
    pops = sorted({fields[2] for fields in lines})
    g = pops.index(lines[s][2])  # VCF-Bert pairs panel line i + 1 with VCF sample i
    freq = np.load(files["freq"])
    n = end - start

    def pad(v):
        return np.concatenate([[0], v, np.zeros(L - n - 1)])

    h1, h2 = gt[start:end, s, 0], gt[start:end, s, 1]
    mask = pad(raw_mask)

    def tokens(h):
        t = np.concatenate([[2], h + 5, [3], np.zeros(L - n - 2)])
        t[mask.astype(bool)] = 4
        return t

    p = positions[start:end].astype(np.float64)
    return {
        "hap_1": tokens(h1),
        "hap_2": tokens(h2),
        "hap_1_label": pad(h1),
        "hap_2_label": pad(h2),
        "gt_label": pad((h1 << 1) + h2),
        "mask": mask,
        "hap1_nomask": h1,
        "hap2_nomask": h2,
        "pos": pad((p - p.min()) / (p.max() - p.min())),
        "af": pad(freq[3][4][start:end]),
        "af_p": pad(freq[3][g][start:end]),
        "ref": pad(freq[0][g][start:end]),
        "het": pad(freq[1][g][start:end]),
        "hom": pad(freq[2][g][start:end]),
    }


# --- items -----------------------------------------------------------------------------------------
def test_every_key_equals_a_recomputation_from_the_files(files, stores):
    ds = stores.dataset(name="train", masks=vb.VcfBertMasks())
    assert len(ds) == 10 * 4 and ds.window_count == 4 and ds.window.window_info.tolist() == [list(w) for w in WINDOWS]
    freq = np.load(files["freq"])
    for item_index in (0, 5, 17, 22, 39):
        s, w = item_index // 4, item_index % 4  # sample-major
        item = ds[item_index]
        start, end = WINDOWS[w]
        raw = _vcfbert_mask(freq[3, 4, start:end], 0, w, 0.3)
        want = _expected_item(files, s, w, raw)
        assert item["window_idx"] == w and isinstance(item["window_idx"], int)
        assert set(item) == set(want) | {"window_idx"}
        for key, value in want.items():
            dtype = torch.float32 if key in ("pos", "af", "af_p", "ref", "het", "hom") else torch.int64
            assert item[key].dtype == dtype, key
            np.testing.assert_array_equal(item[key].numpy(), value.astype(item[key].numpy().dtype), err_msg=key)


def test_default_masks_are_the_schedule_and_collate_keeps_lists(stores):
    ds = stores.dataset(name="train", masks=MaskSchedule(seed=7))
    ds.current_epoch = 3
    item = ds[9]
    w = 9 % 4
    start, end = WINDOWS[w]
    want = MaskSchedule(seed=7).site_mask(stores.frequencies[3, -1, start:end], w, 3, 0.3)
    np.testing.assert_array_equal(item["mask"].numpy()[1 : end - start + 1], want)
    assert vb.VcfBertDataset(stores.cohort, frequencies=stores.frequencies, groups=stores.groups).masks == MaskSchedule(
        0
    )
    batch = vb.collate([ds[i] for i in (0, 1, 2)])
    assert batch["window_idx"] == [0, 1, 2]
    assert [len(h) for h in batch["hap1_nomask"]] == [80, 80, 112] and isinstance(batch["hap2_nomask"], list)
    assert batch["hap_1"].shape == (3, L) and batch["af"].dtype == torch.float32


def test_trainer_attributes(stores):
    ds = stores.dataset(name="train")
    assert ds._TrainDataset__mask_rate == [0.3, 0.4, 0.5, 0.6, 0.7, 0.8] and ds._TrainDataset__level == 0
    for _ in range(8):
        ds.add_level()
    assert ds._TrainDataset__level == 5 and ds.mask_rate == 0.8
    ds.jit_cache_win_idx = -1
    ds.clear_jit_cache()
    assert ds.vocab.mask_index == 4 and ds.name == "train"
    with pytest.raises(ArgumentError, match="training masks follow current_epoch"):
        ds.regenerate_masks(seed=1)
    ds.current_epoch = 1
    ds.regenerate_masks(seed=1)


# --- masks -----------------------------------------------------------------------------------------
def test_vcfbert_masks_follow_its_curriculum_and_validation(stores):
    """Its driver's loop: seed = epoch, level up every 2 epochs; validation at seed 2024, level 4."""
    global_af = stores.frequencies[3, -1]
    train = stores.dataset(name="train", masks=vb.VcfBertMasks())
    val = stores.dataset(name="val", masks=vb.VcfBertMasks())
    for _ in range(4):
        val.add_level()
    val.regenerate_masks(seed=2024)
    before = np.random.get_state()[1].copy()
    for epoch in range(13):
        train.current_epoch = val.current_epoch = epoch
        if epoch > 0:
            train.regenerate_masks(seed=epoch)
        rate = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8][min(epoch // 2, 5)]
        assert train.mask_rate == rate == vb.CURRICULUM_RATES[vb.curriculum_level(epoch)]
        for w, (a, b) in enumerate(WINDOWS):
            got = train[3 * 4 + w]["mask"].numpy()[1 : b - a + 1]
            np.testing.assert_array_equal(got, _vcfbert_mask(global_af[a:b], epoch, w, rate), err_msg=f"{epoch} {w}")
            got = val[w]["mask"].numpy()[1 : b - a + 1]
            np.testing.assert_array_equal(got, _vcfbert_mask(global_af[a:b], 2024, w, 0.7))
        if (epoch + 1) % 2 == 0:
            train.add_level()
    np.testing.assert_array_equal(np.random.get_state()[1], before)  # the global NumPy RNG is never drawn from


def test_vcfbert_off_by_one_on_request(stores):
    af = stores.frequencies[3, -1, 0:80]
    for seed, rate in ((0, 0.3), (5, 0.6)):
        got = vb.VcfBertMasks(af_offset=True).site_mask(af, 0, seed, rate)
        np.testing.assert_array_equal(got, _vcfbert_mask(af, seed, 0, rate, off_by_one=True))
    intended, quirk = vb.VcfBertMasks(), vb.VcfBertMasks(af_offset=True)
    assert (intended.site_mask(af, 0, 0, 0.3) != quirk.site_mask(af, 0, 0, 0.3)).any()
    with pytest.raises(ArgumentError, match="mask rate"):
        vb.VcfBertMasks().site_mask(af, 0, 0, 1.5)


# --- samplers --------------------------------------------------------------------------------------
def _their_order(n_items: int, W: int, shuffle: bool, seed: int | None) -> list[int]:
    """VCF-Bert's WindowGroupedSampler.__iter__, on the global random module."""
    groups: dict[int, list[int]] = {}
    for idx in range(n_items):
        groups.setdefault(idx % W, []).append(idx)
    window_ids = list(groups)
    state = random.getstate()
    if shuffle:
        if seed is not None:
            random.seed(seed)
        random.shuffle(window_ids)
    out = []
    for w in window_ids:
        members = groups[w].copy()
        if shuffle:
            random.shuffle(members)
        out += members
    random.setstate(state)
    return out


def test_window_grouped_sampler_is_their_order(stores):
    ds = stores.dataset(name="train")
    assert [k.index for k in vb.WindowGroupedSampler(ds, shuffle=False)] == _their_order(40, 4, False, None)
    ours = vb.WindowGroupedSampler(ds, shuffle=True, seed=42, cumulative_seed=True)
    seed = 42
    for epoch in range(4):
        ours.set_epoch(epoch)
        seed += epoch  # VCF-Bert: 42, 43, 45, 48
        assert [k.index for k in ours] == _their_order(40, 4, True, seed)
    plain = vb.WindowGroupedSampler(ds, shuffle=True, seed=42)
    plain.set_epoch(3)
    assert [k.index for k in plain] == _their_order(40, 4, True, 45)
    ds.current_epoch, ds._TrainDataset__level = 2, 1
    assert {(k.epoch, k.rate) for k in plain} == {(2, 0.4)}
    assert list(vb.WindowMajorSampler(ds)) == [s * 4 + w for w in range(4) for s in range(10)]


def _same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], torch.Tensor):
                assert torch.equal(x[key], y[key]), key
            else:
                assert len(x[key]) == len(y[key]) and all(
                    torch.equal(u, v) if isinstance(u, torch.Tensor) else u == v
                    for u, v in zip(x[key], y[key], strict=True)
                ), key


@pytest.mark.parametrize("masks", [MaskSchedule(seed=4), vb.VcfBertMasks()])
def test_four_fork_workers_equal_no_workers(stores, masks):
    def epochs(workers: int) -> list[dict]:
        ds = stores.dataset(name="train", masks=masks, budget=MemoryBudget("4GB"))
        sampler = vb.WindowGroupedSampler(ds, shuffle=True, seed=42)
        kwargs = {"multiprocessing_context": "fork", "persistent_workers": True} if workers else {}
        loader = DataLoader(ds, batch_size=7, sampler=sampler, collate_fn=vb.collate, num_workers=workers, **kwargs)
        out = []
        for epoch in range(3):
            sampler.set_epoch(epoch)
            ds.current_epoch = epoch
            out += list(loader)
            ds.add_level()  # the persistent workers must follow the main process's level and epoch
        return out

    _same_batches(epochs(0), epochs(4))


# --- retrieval -------------------------------------------------------------------------------------
def _oracle_neighbours(layer, ref_tokens: np.ndarray, query: np.ndarray, af: np.ndarray, k: int) -> list[int]:
    """VCF-Bert's search in float64: references masked like the query, flattened L2; ties to the lowest index."""
    masked = ref_tokens.copy()
    masked[:, query == 4] = 4
    with torch.no_grad():
        a = torch.as_tensor(af).expand(len(masked), -1)
        r = layer(torch.as_tensor(masked), af=a, pos=True).reshape(len(masked), -1).double()
        q = layer(torch.as_tensor(query)[None], af=a[:1], pos=True).reshape(1, -1).double()
    d = ((r - q) ** 2).sum(1).numpy()
    # Exact float64 distances of the float32 embeddings; equal ones go to the lowest index.
    return np.argsort(d, kind="stable")[:k].tolist()


def test_process_batch_retrieval_outputs_and_gradients(files, stores):
    torch.manual_seed(0)
    layer = BertStyleEmbedding(dropout=0.0)
    ds = stores.dataset(name="train", masks=vb.VcfBertMasks(), budget=MemoryBudget("4GB"), embedding_layer=layer)
    assert ds.embed_dim == 16
    ds.current_epoch = 1
    items = [ds[i] for i in (1, 5, 9, 2, 6, 3)]  # windows 1, 1, 1, 2, 2, 3: a batch across windows
    _, _, ref_gt = _parse_vcf(files["ref"])
    k = 3
    layer.train()
    with torch.enable_grad():
        batch = ds.process_batch_retrieval(vb.collate(items), layer, "cpu", k_retrieve=k)
    assert batch["rag_emb_h1"].shape == (6, k, L, 16) and batch["rag_emb_h1"].dtype == torch.float32
    weights = torch.randn(2, 6, k, L, 16)
    loss = (batch["rag_emb_h1"] * weights[0]).sum() + (batch["rag_emb_h2"] * weights[1]).sum()
    got_grads = torch.autograd.grad(loss, list(layer.parameters()), allow_unused=True)
    want_loss = 0
    for b, item in enumerate(items):
        w = item["window_idx"]
        a, e = WINDOWS[w]
        hap_rows = ref_gt[a:e].transpose(1, 2, 0).reshape(-1, e - a)  # haplotype 2 * sample + ploidy
        ref_tokens = np.zeros((len(hap_rows), L), dtype=np.int64)
        ref_tokens[:, 0], ref_tokens[:, 1 : e - a + 1], ref_tokens[:, e - a + 1] = 2, hap_rows + 5, 3
        af = item["af"].numpy()
        for h in (1, 2):
            want = _oracle_neighbours(layer, ref_tokens, item[f"hap_{h}"].numpy(), af, k)
            assert batch[f"rag_idx_h{h}"][b].tolist() == want, (b, h)
            emb = layer(torch.as_tensor(ref_tokens[want]), af=torch.as_tensor(af).expand(k, -1), pos=True)
            torch.testing.assert_close(batch[f"rag_emb_h{h}"][b], emb.detach(), rtol=1e-5, atol=1e-5)
            want_loss = want_loss + (emb * weights[h - 1, b]).sum()
    want_grads = torch.autograd.grad(want_loss, list(layer.parameters()), allow_unused=True)
    for g, h in zip(got_grads, want_grads, strict=True):
        assert (g is None) == (h is None)
        if g is not None:
            torch.testing.assert_close(g, h, rtol=1e-4, atol=1e-4)
    assert any(g is not None and g.abs().sum() > 0 for g in got_grads)
    with torch.no_grad():
        again = ds.process_batch_retrieval(vb.collate(items), layer, "cpu", k_retrieve=k)
    assert not again["rag_emb_h1"].requires_grad
    torch.testing.assert_close(again["rag_emb_h1"], batch["rag_emb_h1"].detach())


# --- imputation ------------------------------------------------------------------------------------
class _ProbeModel(nn.Module):
    """Returns P(ALT) = the observed allele where unmasked, the population AF (af_p) where masked."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.embedding = layer

    def forward(self, x: dict) -> list[torch.Tensor]:
        assert x["rag_emb_h1"].shape[:3] == (*x["hap_1"].shape[:1], 2, L)
        out = []
        for h in ("hap_1", "hap_2"):
            p = torch.where(x[h] == 4, x["af_p"], (x[h] == 6).float())
            out.append(torch.stack([1 - p, p], -1))
        return [*out, None]


def test_imputation_in_site_by_sample_order(files, stores, tmp_path):
    _, positions, _ = _parse_vcf(files["ref"])
    reference = vb.build_panel(files["ref"], tmp_path / "ref", window_size=64, af=stores.frequencies[3, -1])
    assert reference.windows.tolist() == [[a, min(a + 64, 300)] for a in range(0, 300, 64)]
    # A target with every third record dropped and one genotype missing: rows of the reference VCF's
    # records, samples T3, T1, T7 in that order.
    all_records = _records(10, 1)
    keep = [i for i in range(N_RECORDS) if i % 3 != 1]
    target_records = []
    for i in keep:
        r = all_records[i]
        gts = [r[5][3], r[5][1], r[5][7]]
        if i == 30:
            gts[1] = ".|."
        target_records.append((*r[:5], gts))
    target_vcf = write_vcf(tmp_path / "target.vcf.gz", target_records, ["T3", "T1", "T7"])
    with pytest.warns(InputWarning, match="another order than the panel; vcfstore pairs them by name"):
        ds = vb.VcfBertInferDataset(reference, target_vcf, frequencies=files["freq"], panel=files["panel"])
    assert len(ds) == 3 * 5 and ds.target.report.missing == N_RECORDS - len(keep)
    np.testing.assert_array_equal(ds.position_needed, np.isin(np.arange(N_RECORDS), keep, invert=True))
    item = ds[1 * 5 + 0]  # sample T1, window 0
    mask = item["mask"].numpy()[1:65].astype(bool)
    want_mask = ds.position_needed[:64].copy()
    want_mask[30] = True  # its missing genotype
    np.testing.assert_array_equal(mask, want_mask)
    np.testing.assert_array_equal(ds.infer_masks[0][1:65], ds.position_needed[:64])

    torch.manual_seed(0)
    model = _ProbeModel(BertStyleEmbedding())
    result = vb.impute(model, ds, k=2, batch_size=2)
    assert result.alt_probability.shape == (N_RECORDS, 3, 2)
    _, _, gt = _parse_vcf(files["train"])
    freq = np.load(files["freq"])
    groups = sorted(SUPER_POPS)
    for j, s in enumerate((3, 1, 7)):
        g = groups.index(SUPER_POPS[s % 4])
        want = gt[:, s, :].astype(np.float32)
        missing = ds.position_needed.copy()
        want[missing] = freq[3, g, missing][:, None]
        if s == 1:
            want[30] = freq[3, g, 30]
        np.testing.assert_allclose(result.alt_probability[:, j], want, err_msg=f"sample {s}")
    np.testing.assert_array_equal(result.positions, positions)
    assert result.samples.tolist() == ["T3", "T1", "T7"]
    np.testing.assert_allclose(result.genotype_probabilities().sum(-1), 1, rtol=1e-6)
    np.testing.assert_allclose(result.dosage(), result.alt_probability.sum(-1))

    class Logits(_ProbeModel):
        def forward(self, x: dict) -> list[torch.Tensor]:
            return [torch.log(p.clamp_min(1e-30)) for p in super().forward(x)[:2]]

    again = vb.impute(Logits(model.embedding), ds, k=2, batch_size=3, outputs="logits")
    np.testing.assert_allclose(again.alt_probability, result.alt_probability, atol=1e-6)


# --- files, stores and errors ----------------------------------------------------------------------
def test_from_file_builds_once_and_reuses(files, tmp_path):
    torch.manual_seed(0)
    layer = BertStyleEmbedding()
    args = (None, files["train"], files["panel"], files["freq"], files["csv"], "type.pkl", "pop.pkl", "pos.pkl")
    ds = vb.VcfBertDataset.from_file(
        *args, files["ref"], embedding_layer=layer, name="train", store_dir=tmp_path, progress=False
    )
    assert ds.name == "train" and ds.embed_dim == 16 and ds.reference is not None
    stamp = (tmp_path / "train.vcf.gz.vcfstore" / "zarr.json").stat().st_mtime_ns
    again = vb.VcfBertDataset.from_file(*args, files["ref"], store_dir=tmp_path, progress=False)
    assert (tmp_path / "train.vcf.gz.vcfstore" / "zarr.json").stat().st_mtime_ns == stamp
    assert again.mask_seed == vb.VALIDATION_SEED  # VCF-Bert's default name is not "train"
    torch.testing.assert_close(ds[3]["af_p"], again[3]["af_p"])


def test_user_errors(files, stores, tmp_path):
    with pytest.raises(InputError, match=r"frequency table has 299 sites but cohort\.vcfstore has 300"):
        vb.VcfBertDataset(stores.cohort, frequencies=stores.frequencies[:, :, 1:])
    with pytest.raises(InputError, match="5 groups but 3 are named"):
        vb.VcfBertDataset(stores.cohort, frequencies=stores.frequencies, groups=["AFR", "EUR", "Global"])
    other = vb.build_panel(files["ref"], tmp_path / "other", windows=files["csv"])  # AF from the panel
    with pytest.raises(InputError, match="other allele frequencies than the frequency table's global AF"):
        vb.VcfBertDataset(stores.cohort, other, frequencies=stores.frequencies, groups=stores.groups)
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n0,10\nx,20\n")
    with pytest.raises(InputError, match="line 3"):
        vb.read_segments_csv(bad)
    bad.write_text("a,b\n0,1029\n")
    with pytest.raises(InputError, match="at most max_seq_len - 2 = 1028 fit"):
        vb.read_segments_csv(bad)
    with pytest.raises(InputError, match="frequency table does not fit"):
        vb.build_panel(files["ref"], tmp_path / "x", windows=files["csv"], af=stores.frequencies[3, -1, :-1])
    np.save(tmp_path / "f.npy", np.zeros((3, 2, 5), np.float32))
    with pytest.raises(InputError, match=r"shape \(3, 2, 5\)"):
        vb.read_frequency_table(tmp_path / "f.npy")
    with pytest.raises(ArgumentError, match="no reference panel"):
        vb.VcfBertDataset(stores.cohort, frequencies=stores.frequencies, groups=stores.groups).process_batch_retrieval(
            vb.collate([stores.dataset()[0]]), BertStyleEmbedding(), "cpu"
        )


@pytest.mark.slow
def test_example_trains_and_imputes(tmp_path):
    """examples/vcfbert_train.py end to end, briefly: the model learns and imputes better than the major allele."""
    import importlib.util

    from tests.helpers import ROOT

    spec = importlib.util.spec_from_file_location("vcfbert_train", ROOT / "examples" / "vcfbert_train.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    r = example.main(["--steps", "60", "--workers", "0", "--out", str(tmp_path)])
    assert r["steps"] == 60 and r["last_loss"] < r["first_loss"]
    assert r["imputation_accuracy"] > r["imputation_baseline"] + 0.02
    assert (tmp_path / "files" / "all.panel").read_text().startswith("sample\tpop\tsuper_pop\tgender\n")
    assert np.load(tmp_path / "files" / "freq.npy").shape[:2] == (4, 6)
