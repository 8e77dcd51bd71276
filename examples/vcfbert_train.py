"""Train a small VCF-Bert-shaped model through vcfstore's VCF-Bert drop-in, then impute with it, on the CPU.

    python examples/vcfbert_train.py [--steps 300] [--k 2] [--workers 2] [--budget 4GB] [--threads 1] [--out DIR]

1. Simulates a 1000 Genomes-like panel with msprime (five super-populations, an out-of-Africa
   split and an admixed AMR) and writes VCF-Bert's files: reference, training, validation and
   target VCFs (the same records, multiallelic ones included), the ``.panel`` file, the
   frequency table ``freq.npy`` (per super-population and Global, over every sample) and a
   segments CSV (windows of 128 records; VCF-Bert's are longer, 1030 tokens, which a CPU run
   cannot afford).
2. Builds the stores from those files (``vcfstore.vcfbert.build_stores``).
3. Trains as VCF-Bert's driver and trainer do: ``WindowGroupedSampler(shuffle=True, seed=42)``,
   its collate, ``process_batch_retrieval(batch, embedding_layer, device, k_retrieve)`` under
   ``enable_grad``, ``current_epoch`` and ``regenerate_masks(seed=epoch)`` every epoch,
   ``add_level()`` every second epoch, a validation set at level 4 and seed 2024, and the loss
   ``3 FL(h1) + 3 FL(h2) + 4 FL(gt)`` over masked sites (cross-entropy here), all under a
   memory budget. The model has VCF-Bert's input signature: tokens and AF embedded, positions
   and AF fused, the retrieved embeddings fused with the query by AF and population AF, and
   heads that read ``af``/``af_p`` (haplotypes) and ``ref``/``het``/``hom`` (genotypes).
4. Imputes a target that has one site in four (a genotyping array) with ``impute``: window-major
   order, retrieval against the full reference, predictions in site x sample order.
"""

from __future__ import annotations

import argparse
import gzip
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

import vcfstore.vcfbert as vb
from vcfstore.memory.budget import MemoryBudget
from vcfstore.memory.meters import PeakSampler
from vcfstore.retrieval.layers import PositionwiseEmbedding
from vcfstore.store.annotations import SampleAnnotations, group_frequencies

SUPER_POPS = ("AFR", "AMR", "EAS", "EUR", "SAS")
SPLITS = {"reference": 40, "train": 12, "val": 4, "target": 4}  # samples per super-population
WINDOW = 128  # records per window
MAX_SEQ_LEN = WINDOW + 2


# --- 1. a 1000 Genomes-like panel in VCF-Bert's files ---------------------------------------------
def simulate(out: Path, *, length: float = 1e6, seed: int = 1) -> dict[str, Path]:
    """Simulate five super-populations and write the VCFs, .panel, freq.npy and segments CSV."""
    import msprime

    dem = msprime.Demography()
    for name, size in (("AFR", 14_000), ("AMR", 5_000), ("EAS", 8_000), ("EUR", 8_000), ("SAS", 8_000)):
        dem.add_population(name=name, initial_size=size)
    dem.add_population(name="OOA", initial_size=2_000)
    dem.add_population(name="ANC", initial_size=14_000)
    dem.add_admixture(time=20, derived="AMR", ancestral=["EUR", "AFR", "EAS"], proportions=[0.5, 0.2, 0.3])
    dem.add_population_split(time=1_200, derived=["EUR", "EAS", "SAS"], ancestral="OOA")
    dem.add_population_split(time=3_000, derived=["AFR", "OOA"], ancestral="ANC")
    per_pop = sum(SPLITS.values())
    ts = msprime.sim_ancestry(
        samples=dict.fromkeys(SUPER_POPS, per_pop),
        demography=dem,
        sequence_length=length,
        recombination_rate=1e-8,
        random_seed=seed,
    )
    ts = msprime.sim_mutations(ts, rate=1.25e-8, random_seed=seed + 1)  # some sites are multiallelic
    names = [f"HG{i:05d}" for i in range(ts.num_individuals)]
    super_pop = [ts.population(ind.population).metadata["name"] for ind in ts.individuals()]
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "panel": vb.write_panel_file(out / "all.panel", names, [f"{p}1" for p in super_pop], super_pop),
        "segments": vb.write_segments_csv(
            out / "segments.csv", [(a, min(a + WINDOW, ts.num_sites)) for a in range(0, ts.num_sites, WINDOW)]
        ),
    }
    # VCF-Bert's frequency table over every sample, its genotypes read as GT[GT > 0] = 1.
    alleles = (ts.genotype_matrix() > 0).astype(np.uint8)
    labels = SampleAnnotations(np.asarray(super_pop), np.asarray(super_pop), np.full(len(names), ""))
    files["freq"] = vb.write_frequency_table(out / "freq.npy", group_frequencies(alleles, labels))
    # Each split takes its share of every super-population.
    rank = np.zeros(ts.num_individuals, dtype=int)
    for p in SUPER_POPS:
        members = [i for i, sp in enumerate(super_pop) if sp == p]
        rank[members] = np.arange(len(members))
    first = 0
    chip = np.arange(ts.num_sites) % 4 != 0  # the target is genotyped at one site in four
    for split, n in SPLITS.items():
        who = np.flatnonzero((rank >= first) & (rank < first + n))
        first += n
        path = out / f"{split}.vcf.gz"
        with gzip.open(path, "wt", compresslevel=1) as f:
            ts.write_vcf(
                f,
                contig_id="21",
                individuals=who,
                individual_names=[names[i] for i in who],
                position_transform=lambda x: np.asarray(x, dtype=np.int64) + 1,
                site_mask=chip if split == "target" else None,
            )
        files[split] = path
    files["truth"] = out / "target_truth.npy"
    target = np.flatnonzero((rank >= first - SPLITS["target"]) & (rank < first))
    hap = np.stack([2 * target, 2 * target + 1], axis=1).reshape(-1)
    np.save(files["truth"], alleles[:, hap].reshape(ts.num_sites, len(target), 2))
    return files


# --- 3. a small model with VCF-Bert's input signature ---------------------------------------------
class Fusion(nn.Module):
    """VCF-Bert's ``emb_fusion``: ``LayerNorm(emb + GELU(Linear([emb, pos, af])))``."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.mix = nn.Linear(d + 2, d)
        self.norm = nn.LayerNorm(d)

    def forward(self, emb: torch.Tensor, pos: torch.Tensor, af: torch.Tensor) -> torch.Tensor:
        return self.norm(emb + nn.functional.gelu(self.mix(torch.cat([emb, pos[..., None], af[..., None]], -1))))


class SmallVcfBert(nn.Module):
    """Reads VCF-Bert's batch dict; returns ``[hap1_probs, hap2_probs, gt_probs]`` ([B, L, 2], [B, L, 2], [B, L, 4])."""

    def __init__(self, d: int = 32, layers: int = 2, heads: int = 4, max_len: int = MAX_SEQ_LEN) -> None:
        super().__init__()
        self.embedding = PositionwiseEmbedding(d, max_len=max_len)  # called as layer(tokens, af=af, pos=True)
        self.fusion = Fusion(d)
        self.rag_gate = nn.Linear(2 * d + 2, d)  # how much of the retrieved haplotype to take, by AF and population AF
        block = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(block, layers)
        self.hap_head = nn.Linear(d + 2, 2)  # reads af, af_p
        self.gt_head = nn.Linear(2 * d + 3, 4)  # reads ref, het, hom

    def haplotype(self, x: dict[str, Any], h: int) -> torch.Tensor:
        q = self.fusion(self.embedding(x[f"hap_{h}"], af=x["af"], pos=True), x["pos"], x["af"])
        rag = self.fusion(x[f"rag_emb_h{h}"].mean(dim=1), x["pos"], x["af"])  # the mean over K, as VCF-Bert
        gate = torch.sigmoid(self.rag_gate(torch.cat([q, rag, x["af"][..., None], x["af_p"][..., None]], -1)))
        return self.encoder(q + gate * rag)

    def forward(self, x: dict[str, Any]) -> list[torch.Tensor]:
        h1, h2 = self.haplotype(x, 1), self.haplotype(x, 2)
        freqs = torch.stack([x["af"], x["af_p"]], -1)
        gfreq = torch.stack([x["ref"], x["het"], x["hom"]], -1)
        return [
            torch.softmax(self.hap_head(torch.cat([h1, freqs], -1)), -1),
            torch.softmax(self.hap_head(torch.cat([h2, freqs], -1)), -1),
            torch.softmax(self.gt_head(torch.cat([h1, h2, gfreq], -1)), -1),
        ]


def masked_loss(out: list[torch.Tensor], data: dict[str, Any]) -> tuple[torch.Tensor, int, int]:
    """VCF-Bert's weighting 3 h1 + 3 h2 + 4 gt over masked sites (cross-entropy), and haplotype hits / total."""
    m = data["mask"].bool()

    def nll(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.nll_loss(torch.log(p[m].clamp_min(1e-8)), y[m])

    loss = (
        3 * nll(out[0], data["hap_1_label"]) + 3 * nll(out[1], data["hap_2_label"]) + 4 * nll(out[2], data["gt_label"])
    )
    hits = int(
        (out[0].argmax(-1)[m] == data["hap_1_label"][m]).sum() + (out[1].argmax(-1)[m] == data["hap_2_label"][m]).sum()
    )
    return loss / 10, hits, 2 * int(m.sum())


def major_allele_accuracy(data: dict[str, Any]) -> tuple[int, int]:
    """Hits of always predicting the more frequent allele (global AF) at masked sites: the baseline."""
    m = data["mask"].bool()
    major = (data["af"] > 0.5).long()
    return int((major[m] == data["hap_1_label"][m]).sum() + (major[m] == data["hap_2_label"][m]).sum()), 2 * int(
        m.sum()
    )


def _summary(history: list[tuple[float, int, int, int]]) -> tuple[float, float, float]:
    """Mean loss, masked accuracy and the major-allele baseline over (loss, hits, total, baseline hits) steps."""
    total = sum(h[2] for h in history)
    return (
        float(np.mean([h[0] for h in history])),
        sum(h[1] for h in history) / total,
        sum(h[3] for h in history) / total,
    )


# --- the run -------------------------------------------------------------------------------------
def run(
    out: Path, *, steps: int, k: int, batch_size: int, workers: int, budget: str, seed: int, threads: int
) -> dict[str, Any]:
    # A model this small gains nothing from intra-op threads, and on a shared CPU they contend
    # with the DataLoader workers (measured here: 3.5 s a step on 2 threads, 0.3 s on 1).
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    files = simulate(out / "files", seed=seed + 1)
    stores = vb.build_stores(
        out / "stores",
        training=files["train"],
        reference=files["reference"],
        panel=files["panel"],
        frequencies=files["freq"],
        windows=files["segments"],
        max_seq_len=MAX_SEQ_LEN,
        progress=False,
    )
    val_store = vb.build_panel(
        files["val"],
        out / "stores" / "val.vcfstore",
        windows=files["segments"],
        af=stores.frequencies[3, -1],
        annotations=files["panel"],
        max_seq_len=MAX_SEQ_LEN,
        progress=False,
    )
    n_ref = stores.reference.n_haplotypes // 2
    print(
        f"1-2. simulated and stored in {time.perf_counter() - t0:.1f} s: reference {n_ref} "
        f"samples, training {stores.cohort.n_haplotypes // 2}, validation {val_store.n_haplotypes // 2}; "
        f"{stores.cohort.n_sites} records in {stores.cohort.n_windows} windows; groups {stores.groups}"
    )

    torch.manual_seed(seed)
    mem = MemoryBudget(budget)
    device = torch.device("cpu")
    model = SmallVcfBert().to(device)
    embedding_layer = model.embedding
    train_ds = stores.dataset(name="train", masks=vb.VcfBertMasks(), budget=mem, embedding_layer=embedding_layer)
    val_ds = vb.VcfBertDataset(
        val_store,
        stores.reference,
        frequencies=stores.frequencies,
        groups=stores.groups,
        masks=vb.VcfBertMasks(),
        name="val",
        budget=mem,
    )
    for _ in range(4):  # VCF-Bert's driver: validation fixed at level 4 (rate 0.70), seed 2024
        val_ds.add_level()
    val_ds.regenerate_masks(seed=vb.VALIDATION_SEED)
    sampler = vb.WindowGroupedSampler(train_ds, shuffle=True, seed=42)
    loader_kwargs: dict[str, Any] = (
        {"multiprocessing_context": "fork", "worker_init_fn": mem.worker_init_fn()} if workers else {}
    )
    train_loader = DataLoader(
        train_ds, batch_size=batch_size, sampler=sampler, collate_fn=vb.collate, num_workers=workers, **loader_kwargs
    )
    val_loader = DataLoader(
        val_ds,
        batch_size=2 * batch_size,
        sampler=vb.WindowGroupedSampler(val_ds, shuffle=False),
        collate_fn=vb.collate,
        num_workers=workers,
        **loader_kwargs,
    )
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    print(f"3. training {steps} steps, K={k}, batch {batch_size}, {workers} workers, budget {budget}")
    history: list[tuple[float, int, int, int]] = []
    step, epoch, t1 = 0, 0, time.perf_counter()
    with PeakSampler(interval=0.01) as peak:
        while step < steps:
            sampler.set_epoch(epoch)
            train_ds.current_epoch = val_ds.current_epoch = epoch
            if epoch > 0:
                train_ds.regenerate_masks(seed=epoch)
            model.train()
            for data in train_loader:
                with torch.enable_grad():
                    data = train_ds.process_batch_retrieval(data, embedding_layer, device, k_retrieve=k)
                loss, hits, total = masked_loss(model(data), data)
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                history.append((loss.item(), hits, total, major_allele_accuracy(data)[0]))
                step += 1
                if step >= steps:
                    break
            val_hits = val_total = base_hits = 0
            model.eval()
            with torch.no_grad():
                for data in val_loader:
                    data = val_ds.process_batch_retrieval(data, embedding_layer, device, k_retrieve=k)
                    _, hits, total = masked_loss(model(data), data)
                    val_hits, val_total = val_hits + hits, val_total + total
                    base_hits += major_allele_accuracy(data)[0]
            loss, acc, base = _summary(history[-50:])
            print(
                f"   epoch {epoch} (rate {train_ds.mask_rate:.2f}) step {step:4d}: loss {loss:.4f}, masked accuracy "
                f"{acc:.3f} (major allele {base:.3f}); validation at rate 0.70: {val_hits / val_total:.3f} "
                f"(major allele {base_hits / val_total:.3f})"
            )
            val_ds.clear_jit_cache()
            if (epoch + 1) % 2 == 0:
                train_ds.add_level()
            epoch += 1
    train_seconds = time.perf_counter() - t1

    t2 = time.perf_counter()
    reference = vb.build_panel(
        files["reference"],
        out / "stores" / "reference.infer.vcfstore",
        window_size=WINDOW,
        af=stores.frequencies[3, -1],
        max_seq_len=MAX_SEQ_LEN,
        progress=False,
    )
    infer_ds = vb.VcfBertInferDataset(
        reference,
        files["target"],
        frequencies=stores.frequencies,
        groups=stores.groups,
        panel=files["panel"],
        budget=mem,
    )
    result = vb.impute(model, infer_ds, embedding_layer=embedding_layer, k=k, batch_size=2 * batch_size)
    truth = np.load(files["truth"])
    imputed = result.imputed
    calls = result.hard_calls()[imputed]
    major = (stores.frequencies[3, -1, imputed] > 0.5)[:, None, None]
    accuracy, baseline = float((calls == truth[imputed]).mean()), float((major == truth[imputed]).mean())
    print(
        f"4. imputed {int(imputed.sum())} of {len(imputed)} sites for {len(result.samples)} targets "
        f"({infer_ds.target.report.aligned} genotyped) in {time.perf_counter() - t2:.1f} s: allele accuracy "
        f"{accuracy:.3f} (major allele {baseline:.3f}); results {result.alt_probability.shape} "
        "(site x sample x haplotype)"
    )
    span = max(1, min(50, len(history) // 4))
    first, last = _summary(history[:span]), _summary(history[-span:])
    summary = {
        "steps": step,
        "seconds": train_seconds,
        "first_loss": first[0],
        "last_loss": last[0],
        "first_accuracy": first[1],
        "last_accuracy": last[1],
        "baseline_accuracy": last[2],
        "imputation_accuracy": accuracy,
        "imputation_baseline": baseline,
        "peak_anon": peak.peak_anon,
        "budget_limit": mem.report()["limit"],
    }
    print(
        f"loss {summary['first_loss']:.4f} -> {summary['last_loss']:.4f}, masked accuracy "
        f"{summary['first_accuracy']:.3f} -> {summary['last_accuracy']:.3f} (major allele "
        f"{summary['baseline_accuracy']:.3f}) in {step} steps, {train_seconds:.0f} s; peak anonymous memory of the "
        f"training process {peak.peak_anon / 2**20:.0f} MiB (budget {summary['budget_limit'] / 2**30:.2f} GiB)"
    )
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=24)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--budget", default="4GB", help="memory budget of the training process (e.g. 4GB, 80%%)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the training process")
    ap.add_argument("--out", type=Path, help="keep the files and stores here (default: a temporary directory)")
    args = ap.parse_args(argv)
    kwargs = {
        "steps": args.steps,
        "k": args.k,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "budget": args.budget,
        "seed": args.seed,
        "threads": args.threads,
    }
    if args.out is not None:
        return run(args.out, **kwargs)
    with tempfile.TemporaryDirectory(prefix="vcfstore-vcfbert-") as tmp:
        return run(Path(tmp), **kwargs)


if __name__ == "__main__":
    main()
