"""The training step at memory speed (issue #14): per-batch ratios to the original design, autograd bytes, an epoch.

    python -m benchmarks.training_step [--quick] [--out DIR] [--work DIR] [--threads 2]
                                       [--subset-every 10] [--full K,D ...]

The panel is simulated with msprime (as ``benchmarks.designs``): a reference of 2008 haplotypes and
a training cohort of 833 samples over the same sites, windows of 455 sites (about 150,000 sites,
331 windows). The layer is VCF-Bert's (:class:`~vcfstore.retrieval.VcfBertEmbedding`, called with
``pos=True``), the same weights in every design.

1. Per batch (one worker process), on the first windows, for D = 192 and 384, K = 1 and 8, a
   batch of 24 cohort samples (48 masked query haplotypes):

   * the original design, :class:`benchmarks.design_kinds.InRamOriginal` as issue #14 defines it:
     every masked reference of the window encoded into a FAISS flat L2 index in RAM, the encoded
     queries searched, then the K retrieved complete rows encoded with gradients;
   * vcfstore's exact backend: ``Retriever.search`` (warm: the window's terms cached for the
     weights, and cold: recomputed) and ``Retriever.augment`` (search and table composition, with
     gradients), both with a memory budget;
   * then, for both, a loss on the retrieved embeddings and its backward (VCF-Bert's head is
     replaced by a linear head on the mean over K, the same for both).

   Warm batches, best of several (medians kept too); eval mode (dropout off, as
   ``benchmarks.designs``) and train mode (dropout on the retrieved embeddings). Autograd's saved
   bytes for the retrieved embeddings are counted with ``saved_tensors_hooks``: composed, direct
   (``compose="never"``) and the original design's encoding.
2. An epoch per (K, D) (one worker process each, its peak anonymous memory sampled from
   outside): every batch of the cohort in 24-sample window-grouped batches through the library's
   data path (``TargetDataset``, ``collate``), ``Retriever.augment``, the loss, its backward and an
   optimiser step (the weights change every batch, as in training), in eval mode. The settings
   named by ``--full`` (default K=8, D=192) run every window; the others every ``--subset-every``-th
   window, scaled to 331 windows and marked as such.

Writes training_step.json (summary: ratios, goals, epoch figures) and training_step.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .common import RESULTS, dir_bytes, write_result
from .design_kinds import BATCH_SAMPLES, MAX_SEQ_LEN, REAL_HAPLOTYPES, REAL_WINDOWS, SITES_PER_WINDOW, InRamOriginal
from .designs_report import _agreement

COHORT_SAMPLES = 833
GOALS = {  # issue #14: ratio to the original design, at most
    "search_k8_d192": 0.01,
    "augment_k8_d192": 0.15,
    "augment_k8_d384": 0.15,
    "augment_k1_d192": 0.05,
    "saved_bytes_k8_d192": 0.25,
    "epoch_retrieval_k8_d192": 0.2,
}


# --- the layer and the original design --------------------------------------------------------------


def _layer(d: int, max_len: int) -> Any:
    """VCF-Bert's layer called as VCF-Bert calls it (``pos=True``), seeded: every design embeds alike."""
    import torch
    from torch import nn

    from vcfstore.retrieval.layers import VcfBertEmbedding

    class WithPos(nn.Module):
        """``layer(tokens, af=af)`` = VcfBertEmbedding's ``layer(tokens, af=af, pos=True)``."""

        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, tokens: torch.Tensor, af: torch.Tensor | None = None) -> torch.Tensor:
            return self.inner(tokens, af=af, pos=True)

    torch.manual_seed(0)
    return WithPos(VcfBertEmbedding(d, max_len=max(max_len, 1030)))


class OriginalWithGrad(InRamOriginal):
    """Design 1 as issue #14 defines the original: its flat in-RAM search, then the rows encoded with gradients.

    The window's state is the masked embeddings in a FAISS flat index (its complete-embeddings
    copy is not needed when the retrieved rows are encoded on demand, so it is not built); the
    index and the queries are encoded in eval mode, the retrieved rows in the layer's mode.
    """

    def enter_window(self, w: int, mask: np.ndarray, af: np.ndarray, times: dict[str, float]) -> None:
        import faiss

        from vcfstore.retrieval.embedding import eval_mode

        from .design_kinds import clock, encode

        b = self.bench
        with clock(times, "build"), eval_mode(b.layer):
            masked = encode(b.layer, b.ref.window_tokens(w, mask=mask), af, False)
            index = faiss.IndexFlatL2(masked.shape[1])
            index.add(masked)
            del masked
        self.current = self.windows[w] = {"index": index}

    def search(self, w: int, q: np.ndarray, af: np.ndarray, k: int, parts: dict[str, float]) -> tuple[Any, Any]:
        """The flat search of queries encoded in eval mode, as the index was (the layer may be in train mode)."""
        from vcfstore.retrieval.embedding import eval_mode

        with eval_mode(self.bench.layer):
            return super().search(w, q, af, k, parts)

    def rows(self, w: int, found: np.ndarray, af: np.ndarray) -> list[Any]:
        """h1 and h2 [B, K, L, D]: the unique retrieved rows encoded with gradients, gathered."""
        import torch

        from .design_kinds import encode

        uniq, inverse = np.unique(found, return_inverse=True)
        emb = encode(self.bench.layer, self.bench.ref.window_tokens(w, rows=uniq), af, True)
        inverse = torch.as_tensor(inverse.reshape(found.shape))
        n = len(found) // 2
        return [emb[inverse[:n]], emb[inverse[n:]]]


def _loss(head: Any, h1: Any, h2: Any) -> Any:
    """A loss on the retrieved embeddings: a linear head on their mean over K, squared."""
    return head(h1.mean(dim=1)).square().mean() + head(h2.mean(dim=1)).square().mean()


def _batch(q: np.ndarray, af: np.ndarray, w: int) -> dict[str, Any]:
    import torch

    n = len(q) // 2
    return {
        "hap_1": torch.as_tensor(q[0::2]),
        "hap_2": torch.as_tensor(q[1::2]),
        "af": torch.as_tensor(np.tile(af, (n, 1))),
        "window_idx": torch.full((n,), w),
    }


def _times(fn: Callable[[], Any], repeat: int) -> dict[str, float]:
    """Best and median wall time of ``repeat`` calls after one warm-up call."""
    fn()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return {"best": min(ts), "median": float(np.median(ts))}


# --- worker: per-batch figures -------------------------------------------------------------------------


def _measure(
    original: OriginalWithGrad, retr: Any, head: Any, w: int, q: np.ndarray, k: int, repeat: int
) -> dict[str, Any]:
    """One (window, K, mode): both designs' search, retrieved rows and loss + backward, timed."""
    af = original.bench.ref.window_af(w)
    batch = _batch(q, af, w)
    retr.k = k
    row: dict[str, Any] = {"k": k, "window": w}
    _, found = original.search(w, q, af, k, {})
    row["original_search"] = _times(lambda: original.search(w, q, af, k, {}), repeat)
    row["original_encode"] = _times(lambda: original.rows(w, found, af), repeat)

    def original_step() -> None:
        h1, h2 = original.rows(w, found, af)
        _loss(head, h1, h2).backward()

    def cold_search() -> None:
        retr.exact._terms.clear()  # the window's terms embedded again
        retr.search(w, q)

    def exact_step() -> None:
        out = retr.augment(batch)
        _loss(head, out["rag_emb_h1"], out["rag_emb_h2"]).backward()

    row["original_encode_loss_backward"] = _times(original_step, repeat)
    row["exact_search_warm"] = _times(lambda: retr.search(w, q), repeat)
    row["exact_search_cold"] = _times(cold_search, repeat)
    row["exact_augment"] = _times(lambda: retr.augment(batch), repeat)
    row["exact_augment_loss_backward"] = _times(exact_step, repeat)
    row["plan"] = retr.compose_plan.reason if retr.compose_plan else None
    # the same neighbours as the original (up to ties, within FAISS's float32 rounding), as benchmarks.designs checks
    base = {"neighbours": {w: original.neighbours(*original.search(w, q, af, k, {}))}}
    row["agreement_with_original"] = _agreement(base, {"neighbours": {w: original.neighbours(*retr.search(w, q))}})
    return row


def _saved(original: OriginalWithGrad, retr: Any, direct: Any, w: int, q: np.ndarray, k: int) -> dict[str, int]:
    """Autograd's saved bytes for the retrieved embeddings: composed, direct, the original design's encoding."""
    from vcfstore.retrieval.compose import saved_tensor_bytes

    af = original.bench.ref.window_af(w)
    batch = _batch(q, af, w)
    retr.k = direct.k = k
    _, found = original.search(w, q, af, k, {})
    out: dict[str, int] = {}
    for name, fn in (
        ("composed", lambda: retr.augment(batch)),
        ("direct", lambda: direct.augment(batch)),
        ("original", lambda: original.rows(w, found, af)),
    ):
        fn()  # plans decided, buffers made
        with saved_tensor_bytes(original.bench.layer) as n:
            fn()
        out[name] = n[0]
    return out


def per_batch(cfg: dict[str, Any]) -> dict[str, Any]:
    """Per-batch times and saved bytes of both designs on cfg["windows"], for every D, K and mode."""
    import torch
    from torch import nn

    import vcfstore as vs

    from .design_kinds import Bench

    torch.set_num_threads(cfg["threads"])
    ref, tgt = vs.open_store(cfg["reference"]), vs.open_store(cfg["targets"])
    masks = vs.MaskSchedule(1).at(ref, epoch=0, rate=0.3)
    rows: list[dict[str, Any]] = []
    saved: list[dict[str, Any]] = []
    for d in cfg["ds"]:
        layer = _layer(d, ref.max_seq_len)
        torch.manual_seed(1)
        head = nn.Linear(d, 2)
        original = OriginalWithGrad(Bench(cfg, vs, ref, tgt, layer, masks, Path(cfg["work"])))
        budget = vs.MemoryBudget(cfg["budget"])
        retr = vs.Retriever(ref, layer, k=max(cfg["ks"]), backend="exact", budget=budget)
        direct = vs.Retriever(ref, layer, k=max(cfg["ks"]), backend="exact", budget=budget, compose="never")
        repeat = cfg["repeat"] if d < 384 else max(2, cfg["repeat"] // 2)
        for w in cfg["windows"]:
            q = original.bench.queries(w)
            original.enter_window(w, masks[w], ref.window_af(w), {})
            for mode in cfg["modes"]:
                layer.train(mode == "train")
                for k in cfg["ks"]:
                    rows.append({"d": d, "mode": mode, **_measure(original, retr, head, w, q, k, repeat)})
                    print(f"per-batch D={d} K={k} {mode} window {w}: done", file=sys.stderr, flush=True)
                if w == cfg["windows"][0]:
                    k = max(cfg["ks"])
                    saved.append({"d": d, "k": k, "mode": mode, **_saved(original, retr, direct, w, q, k)})
            original.windows.clear()
    return {"rows": rows, "saved_bytes": saved, "load_average_end": os.getloadavg()}


# --- worker: an epoch -----------------------------------------------------------------------------------


def epoch(cfg: dict[str, Any]) -> dict[str, Any]:
    """One epoch (or its cfg["windows"]) of training batches: data, augment, loss + backward + step."""
    import torch
    from torch import nn

    import vcfstore as vs

    torch.set_num_threads(cfg["threads"])
    ref, tgt = vs.open_store(cfg["reference"]), vs.open_store(cfg["targets"])
    d, k = cfg["d"], cfg["k"]
    layer = _layer(d, ref.max_seq_len).eval()
    torch.manual_seed(1)
    head = nn.Linear(d, 2)
    opt = torch.optim.SGD([*layer.parameters(), *head.parameters()], lr=1e-4)
    budget = vs.MemoryBudget(cfg["budget"])
    retr = vs.Retriever(ref, layer, k=k, backend="exact", budget=budget)
    ds = vs.TargetDataset(tgt, vs.MaskSchedule(1), reference=ref, rate=0.3, budget=budget)
    n = ds.n_samples
    times = {"data": 0.0, "augment": 0.0, "loss_backward_step": 0.0}
    batches = 0
    t_start = time.perf_counter()
    for i, w in enumerate(cfg["windows"]):
        for s in range(0, n, cfg["batch_samples"]):
            t0 = time.perf_counter()
            batch = vs.collate([ds[w * n + j] for j in range(s, min(n, s + cfg["batch_samples"]))])
            t1 = time.perf_counter()
            out = retr.augment(batch)
            t2 = time.perf_counter()
            loss = _loss(head, out["rag_emb_h1"], out["rag_emb_h2"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            del out, loss
            t3 = time.perf_counter()
            times["data"] += t1 - t0
            times["augment"] += t2 - t1
            times["loss_backward_step"] += t3 - t2
            batches += 1
        progress = {
            "k": k,
            "d": d,
            "windows_run": i + 1,
            "batches_run": batches,
            "wall_s": time.perf_counter() - t_start,
            **{f"{key}_s": v for key, v in times.items()},
            "plan": retr.compose_plan.reason if retr.compose_plan else None,
            "budget_refused": budget.report().get("refused", None),
            "load_average_end": os.getloadavg(),
        }
        Path(cfg["progress"]).write_text(json.dumps(progress))  # what a run cut short leaves: a measured subset
    return progress


WORKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {"per_batch": per_batch, "epoch": epoch}


def _run(worker: str, cfg: dict[str, Any], timeout: float) -> dict[str, Any]:
    from vcfstore.testing import run_measured

    argv = [sys.executable, "-m", "benchmarks.training_step", "--worker", worker, "--config", json.dumps(cfg)]
    run = run_measured(argv, interval=0.02, timeout=timeout)
    if run.returncode != 0:
        progress = Path(cfg.get("progress", "/nonexistent"))
        if not progress.is_file():
            raise RuntimeError(f"worker {worker} failed: {run.stderr.strip()[-2000:]}")
        res = json.loads(progress.read_text())  # the windows it finished
        res["cut_short"] = f"exit status {run.returncode}: {run.stderr.strip()[-300:]}"
    else:
        res = json.loads(run.stdout.strip().splitlines()[-1])
    res.update(peak_anon=run.peak_anon, peak_rss=run.peak_rss)
    return res


# --- the summary ------------------------------------------------------------------------------------------


def _setting(rows: list[dict[str, Any]], d: int, k: int, mode: str) -> dict[str, float]:
    """Best-of-repeats times of one (D, K, mode), averaged over the measured windows."""
    sel = [r for r in rows if r["d"] == d and r["k"] == k and r["mode"] == mode]
    keys = [key for key, v in sel[0].items() if isinstance(v, dict)]
    return {key: float(np.mean([r[key]["best"] for r in sel])) for key in keys}


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """Ratios to the original design, the goals of issue #14, and the epoch figures."""
    rows = result["per_batch"]["rows"]
    per_setting = []
    for d in sorted({r["d"] for r in rows}):
        for k in sorted({r["k"] for r in rows}):
            for mode in sorted({r["mode"] for r in rows}):
                t = _setting(rows, d, k, mode)
                original = t["original_search"] + t["original_encode"]
                per_setting.append(
                    {
                        "d": d,
                        "k": k,
                        "mode": mode,
                        "times_s": t,
                        "original_batch_s": original,
                        "search_ratio": t["exact_search_warm"] / t["original_search"],
                        "search_cold_ratio": t["exact_search_cold"] / t["original_search"],
                        "augment_ratio": t["exact_augment"] / original,
                        "step_ratio": t["exact_augment_loss_backward"] / t["original_encode_loss_backward"],
                    }
                )

    def pick(d: int, k: int, mode: str = "eval") -> dict[str, Any]:
        return next(s for s in per_setting if s["d"] == d and s["k"] == k and s["mode"] == mode)

    ds, ks = sorted({r["d"] for r in rows}), sorted({r["k"] for r in rows})
    d_lo, d_hi, k_lo, k_hi = ds[0], ds[-1], ks[0], ks[-1]
    saved = result["per_batch"]["saved_bytes"]
    saved_rows = [
        {
            **s,
            "composed_over_direct": s["composed"] / s["direct"],
            "composed_over_original": s["composed"] / s["original"],
        }
        for s in saved
    ]
    saved_train = next((s for s in saved_rows if s["d"] == d_lo and s["mode"] == "train"), saved_rows[0])
    epochs = []
    batches_full = result["panel"]["windows_epoch"] * math.ceil(result["panel"]["cohort_samples"] / BATCH_SAMPLES)
    for e in result["epochs"]:
        scale = batches_full / e["batches_run"]
        base = pick(e["d"], e["k"])
        original_epoch = base["original_batch_s"] * batches_full
        original_step_epoch = base["times_s"]["original_encode_loss_backward"] * batches_full
        epochs.append(
            {
                **e,
                "subset": e["windows_run"] < result["panel"]["windows_epoch"],
                "epoch_batches": batches_full,
                "epoch_augment_s": e["augment_s"] * scale,
                "epoch_total_s": (e["augment_s"] + e["loss_backward_step_s"] + e["data_s"]) * scale,
                "original_per_batch_x_batches_s": original_epoch,
                "original_step_x_batches_s": original_step_epoch,
                "retrieval_ratio": e["augment_s"] * scale / original_epoch,
                "step_ratio": (e["augment_s"] + e["loss_backward_step_s"]) * scale / original_step_epoch,
            }
        )
    goals = {
        "search_k8_d192": pick(d_lo, k_hi)["search_ratio"],
        "augment_k8_d192": pick(d_lo, k_hi)["augment_ratio"],
        "augment_k8_d384": pick(d_hi, k_hi)["augment_ratio"],
        "augment_k1_d192": pick(d_lo, k_lo)["augment_ratio"],
        "saved_bytes_k8_d192": saved_train["composed_over_direct"],
    }
    main_epoch = next((e for e in epochs if e["d"] == d_lo and e["k"] == k_hi), None)
    if main_epoch is not None:
        goals["epoch_retrieval_k8_d192"] = main_epoch["retrieval_ratio"]
    return {
        "per_setting": per_setting,
        "saved_bytes": saved_rows,
        "epochs": epochs,
        "goals": [{"goal": g, "ratio": v, "target": GOALS[g], "met": bool(v <= GOALS[g])} for g, v in goals.items()],
    }


def print_summary(summary: dict[str, Any]) -> None:
    print("per batch (best of repeats, s; ratios to the original design):")
    for s in summary["per_setting"]:
        t = s["times_s"]
        print(
            f"  D={s['d']:4d} K={s['k']} {s['mode']:5s}  original search {t['original_search']:.3f} "
            f"+ encode {t['original_encode']:.3f} | exact search {t['exact_search_warm'] * 1e3:.1f} ms "
            f"({s['search_ratio']:.4f}x), augment {t['exact_augment'] * 1e3:.1f} ms ({s['augment_ratio']:.3f}x), "
            f"with loss+backward {s['step_ratio']:.3f}x"
        )
    for s in summary["saved_bytes"]:
        print(
            f"  saved bytes D={s['d']} K={s['k']} {s['mode']}: composed {s['composed'] / 2**20:.1f} MiB, "
            f"direct {s['direct'] / 2**20:.1f} MiB ({s['composed_over_direct']:.3f}x)"
        )
    for e in summary["epochs"]:
        print(
            f"  epoch K={e['k']} D={e['d']}{' (subset, scaled)' if e['subset'] else ''}"
            f"{' (cut short: ' + e['cut_short'] + ')' if 'cut_short' in e else ''}: augment "
            f"{e['epoch_augment_s']:.0f} s, total {e['epoch_total_s']:.0f} s, peak anon "
            f"{e['peak_anon'] / 2**30:.2f} GiB; retrieval {e['retrieval_ratio']:.3f}x of the original's batches"
        )
    for g in summary["goals"]:
        print(f"  goal {g['goal']}: {g['ratio']:.4f} <= {g['target']}: {'met' if g['met'] else 'NOT met'}")


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = result["summary"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    labels, orig, ours = [], [], []
    for s in summary["per_setting"]:
        if s["mode"] != "eval":
            continue
        t = s["times_s"]
        labels += [f"search\nK={s['k']} D={s['d']}", f"augment\nK={s['k']} D={s['d']}"]
        orig += [t["original_search"], s["original_batch_s"]]
        ours += [t["exact_search_warm"], t["exact_augment"]]
    x = np.arange(len(labels))
    ax1.bar(x - 0.2, orig, 0.4, label="original (in-RAM flat index, rows encoded)", color="#c44")
    ax1.bar(x + 0.2, ours, 0.4, label="vcfstore exact + table composition", color="#3a6")
    ax1.set_yscale("log")
    ax1.set_xticks(x, labels, fontsize=7)
    ax1.set_ylabel("seconds per batch (48 queries)")
    ax1.set_title("per batch, eval mode")
    ax1.legend(fontsize=7)
    names = [f"K={e['k']} D={e['d']}{'*' if e['subset'] else ''}" for e in summary["epochs"]]
    x = np.arange(len(names))
    ax2.bar(x - 0.2, [e["original_per_batch_x_batches_s"] / 3600 for e in summary["epochs"]], 0.4, color="#c44")
    ax2.bar(x + 0.2, [e["epoch_augment_s"] / 3600 for e in summary["epochs"]], 0.4, color="#3a6", label="augment")
    ax2.bar(
        x + 0.2,
        [(e["epoch_total_s"] - e["epoch_augment_s"]) / 3600 for e in summary["epochs"]],
        0.4,
        bottom=[e["epoch_augment_s"] / 3600 for e in summary["epochs"]],
        color="#9c9",
        label="data, loss, backward, step",
    )
    ax2.set_xticks(x, names, fontsize=8)
    ax2.set_ylabel("hours per epoch")
    ax2.set_title(f"epoch ({summary['epochs'][0]['epoch_batches']} batches; * = measured subset, scaled)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a small panel and dimension (under a minute)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--subset-every", type=int, default=10, help="epoch settings not in --full run every Nth window")
    ap.add_argument("--full", nargs="*", default=["8,192"], help="K,D epoch settings run over every window")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--report", type=Path, help="summarise and plot a (partial) result file again, then exit")
    ap.add_argument("--phases", nargs="+", choices=["per_batch", "epochs"], default=["per_batch", "epochs"])
    ap.add_argument("--merge", type=Path, help="a result file whose figures stand in for the phases not run")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(WORKERS[args.worker](json.loads(args.config))))
        return {}
    if args.report:
        result = json.loads(args.report.read_text())
        result.pop("machine", None)
        result["summary"] = summarize(result)
        name = args.report.stem.removesuffix("_partial")
        write_result(name, result, args.out)
        plot(result, args.out / f"{name}.png")
        print_summary(result["summary"])
        return result
    from vcfstore.simulate import simulate_reference_and_targets

    if args.quick:
        n_ref, cohort, window, seq_len, ds, windows, per_batch_windows = 100, 30, 100, 102, [16], 3, [0]
        repeat, length = 1, 5 * 100 / 2500 * 1e6
    else:
        n_ref, cohort, window, seq_len = REAL_HAPLOTYPES // 2, COHORT_SAMPLES, SITES_PER_WINDOW, MAX_SEQ_LEN
        ds, windows, per_batch_windows, repeat = [192, 384], REAL_WINDOWS, [0, 1], 5
        # Sites per Mb for 1837 samples at these rates: over 4,000; enough for the windows.
        length = (REAL_WINDOWS + 2) * SITES_PER_WINDOW / 4000 * 1e6
    name = "training_step" + ("_quick" if args.quick else "")
    partial = args.out / f"{name}_partial.json"  # what has run so far: --report summarises it
    tmp = Path(tempfile.mkdtemp(prefix="vcfstore-training-step-", dir=args.work))
    try:
        t0 = time.perf_counter()
        ref, tgt = simulate_reference_and_targets(
            tmp, n_reference=n_ref, n_target=cohort, sequence_length=length, window_size=window, max_seq_len=seq_len
        )
        n_windows = min(windows, ref.n_windows - 1)  # the last window is short
        result: dict[str, Any] = {
            "benchmark": "training_step",
            "quick": args.quick,
            "threads": args.threads,
            "panel": {
                "haplotypes": ref.n_haplotypes,
                "cohort_samples": tgt.n_haplotypes // 2,
                "sites": ref.n_sites,
                "windows": ref.n_windows,
                "windows_epoch": n_windows,
                "max_seq_len": ref.max_seq_len,
                "store_bytes": dir_bytes(ref.path),
                "store_build_s": time.perf_counter() - t0,
            },
            "epochs": [],
        }
        print(f"panel: {ref.n_haplotypes} haplotypes, {ref.n_sites} sites, {ref.n_windows} windows", flush=True)
        base = {
            "reference": str(ref.path),
            "targets": str(tgt.path),
            "work": str(tmp),
            "threads": args.threads,
            "budget": "8GB" if not args.quick else "2GB",
        }
        if args.merge:  # the same panel (msprime's seed is fixed): the other phases' figures stand
            merged = json.loads(args.merge.read_text())
            result["per_batch"], result["epochs"] = merged.get("per_batch"), merged.get("epochs", [])
        if "per_batch" in args.phases:
            pb_cfg = {**base, "ds": ds, "ks": [1, 8], "windows": per_batch_windows, "repeat": repeat}
            pb_cfg["modes"] = ["eval", "train"]
            print("per-batch figures", flush=True)
            result["per_batch"] = _run("per_batch", pb_cfg, timeout=3 * 3600)
            write_result(partial.stem, result, args.out)
        full = {tuple(int(v) for v in s.split(",")) for s in args.full}
        if "epochs" in args.phases:
            result["epochs"] = []
        for d in ds if "epochs" in args.phases else ():
            for k in (8, 1):
                every = 1 if (k, d) in full or (args.quick and (k, d) == (8, ds[0])) else args.subset_every
                run = list(range(0, n_windows, every))
                cfg = {**base, "d": d, "k": k, "windows": run, "batch_samples": BATCH_SAMPLES}
                cfg["progress"] = str(tmp / f"epoch_{k}_{d}.json")
                print(f"epoch K={k} D={d}: {len(run)} of {n_windows} windows", flush=True)
                result["epochs"].append(_run("epoch", cfg, timeout=12 * 3600))
                write_result(partial.stem, result, args.out)
        result["summary"] = summarize(result)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    path = write_result(name, result, args.out)
    partial.unlink(missing_ok=True)
    plot(result, args.out / f"{name}.png")
    print_summary(result["summary"])
    print(f"wrote {path} and {args.out / f'{name}.png'}")
    return result


if __name__ == "__main__":
    main()
