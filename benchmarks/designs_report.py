"""What ``benchmarks.designs`` reports: the summary rows, the console tables, the README section, the plot.

Everything here reads result dictionaries only. :func:`summarize` turns the raw figures (phases A
and B, as the workers returned them) into the summary rows; the rest reads the summary file
(``designs.json``: machine, panel, summary rows, phase A's memory timelines).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .design_kinds import BATCH_SAMPLES, DESIGNS, REAL_WINDOWS, InRamOriginal

BASELINE = InRamOriginal.name  # the design the others are compared with


def _agreement(base: dict[str, Any], other: dict[str, Any]) -> float:
    """Share of queries with the same K neighbours as design 1, up to ties.

    The same neighbours: the same indices, or the same sorted distances within FAISS's float32
    rounding (about eps * sqrt(dim) * (|q|^2 + |r|^2); |r|^2 is taken as |q|^2).
    """
    same = total = 0
    for w, nb in base["neighbours"].items():
        d0, d1 = np.asarray(nb["d"]), np.asarray(other["neighbours"][w]["d"])
        i0, i1 = np.asarray(nb["i"]), np.asarray(other["neighbours"][w]["i"])
        atol = 16 * np.finfo(np.float32).eps * np.sqrt(nb["dim"]) * 2 * np.asarray(nb["q_norm2"])[:, None]
        close = (np.abs(np.sort(d0, 1) - np.sort(d1, 1)) <= atol).all(axis=1)
        same += int((close | (i0 == i1).all(axis=1)).sum())
        total += len(d0)
    return same / max(total, 1)


def _mean(batches: list[dict[str, float]], key: str) -> float:
    return float(np.mean([b.get(key, 0.0) for b in batches]))


def summarize(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (design, D): peak RAM, disk, per-batch costs, epoch retrieval, agreement."""
    rows = []
    panel = result["panel"]
    scale = REAL_WINDOWS / panel["windows"] if not result["quick"] else 1.0
    batches_per_window = int(np.ceil(panel["haplotypes"] / 2 / BATCH_SAMPLES))
    by_d: dict[int, dict[str, Any]] = {}
    for r in result["phase_a"]:
        by_d.setdefault(r["d"], {})[r["design"]] = r
    epoch_b = {r["design"]: r for r in result["phase_b"] if "failed" not in r}
    for d, designs in by_d.items():
        base = designs.get(BASELINE)
        for name, r in designs.items():
            if name not in DESIGNS:  # an extras job: its figures join its design's row
                continue
            if "failed" in r:
                rows.append({"design": name, "d": d, "failed": r["failed"]})
                continue
            n_win = len(r["windows"])
            cold = r["batches"]["K=8"]["cold"]
            warm = r["batches"]["K=8"]["warm"]
            warm1 = r["batches"]["K=1"]["warm"]
            row = {
                "design": name,
                "d": d,
                "windows_measured": n_win,
                "peak_anon": r["peak_anon"],
                "peak_rss": r["peak_rss"],
                "disk_bytes_measured": r["disk_bytes"],
                "build_s_per_window": r["build_s"] / n_win,
                "batch_k1_warm_s": _mean(warm1, "total"),
                "batch_k8_warm_s": _mean(warm, "total"),
                "batch_k8_cold_s": _mean(cold, "total"),
                "batch_k8_parts_warm": {
                    p: _mean(warm, p) for p in ("load", "encode_queries", "search", "read", "encode")
                },
                "batch_k8_parts_cold": {
                    p: _mean(cold, p) for p in ("load", "encode_queries", "search", "read", "encode")
                },
                "agreement_with_ram": _agreement(base, r) if base and "failed" not in base else None,
            }
            # Design 1 holds every window: the measured peak plus the state of the windows not run.
            per_window = r.get("state_bytes_per_window")
            row["extrapolated"] = {
                "ram_all_windows_bytes": r["peak_anon"] + per_window * (REAL_WINDOWS - n_win) if per_window else None,
                "disk_all_windows_bytes": r["disk_bytes"] / max(n_win, 1) * REAL_WINDOWS if r["disk_bytes"] else 0,
                "epoch_rebuild_s": r["build_s"] / n_win * REAL_WINDOWS if DESIGNS[name].rebuilds_each_epoch else None,
                "epoch_retrieval_s": (_mean(cold, "total") + (batches_per_window - 1) * _mean(warm, "total"))
                * REAL_WINDOWS,
            }
            extras = designs.get(DESIGNS[name].extras_job or "", {})
            if "extra" in extras:
                row["extra"] = extras["extra"]
            rows.append(row)
    for name, r in epoch_b.items():
        n_win = len(r["windows"])
        cold = r["batches"]["K=8"]["cold"]
        warm = r["batches"]["K=8"]["warm"]
        per_window = [c["total"] + (batches_per_window - 1) * w_["total"] for c, w_ in zip(cold, warm, strict=True)]
        rows.append(
            {
                "design": name,
                "d": r["d"],
                "phase": "B (all windows)",
                "windows_measured": n_win,
                "peak_anon": r["peak_anon"],
                "peak_rss": r["peak_rss"],
                "disk_bytes_measured": r["disk_bytes"],
                "epoch_retrieval_s_measured_windows": float(np.sum(per_window)),
                "epoch_retrieval_s_331_windows": float(np.sum(per_window)) * scale,
                "build_s": r["build_s"],
            }
        )
    return rows


def print_summary(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(
        title=f"retrieval designs on {result['panel']['haplotypes']} haplotypes, "
        f"{result['panel']['windows']} windows (K=8, batch {BATCH_SAMPLES} x 2)"
    )
    for c in (
        "design",
        "D",
        "peak anon (measured)",
        "disk all windows",
        "batch warm",
        "batch cold",
        "epoch retrieval (331 win.)",
        "same neighbours",
    ):
        t.add_column(c, justify="right" if c != "design" else "left")
    for r in result["summary"]:
        if "failed" in r:
            t.add_row(r["design"], str(r["d"]), "failed: " + " ".join(r["failed"]), "", "", "", "", "")
            continue
        if r.get("phase"):
            t.add_row(
                f"{r['design']} (all windows)",
                str(r["d"]),
                _gb(r["peak_anon"]),
                _gb(r["disk_bytes_measured"]),
                "",
                "",
                f"{r['epoch_retrieval_s_331_windows']:.1f} s",
                "",
            )
            continue
        ex = r["extrapolated"]
        t.add_row(
            r["design"],
            str(r["d"]),
            _gb(r["peak_anon"]) + f" ({r['windows_measured']} w.)",
            _gb(ex["disk_all_windows_bytes"]) + " (extrap.)" if ex["disk_all_windows_bytes"] else "0",
            f"{r['batch_k8_warm_s'] * 1e3:.0f} ms",
            f"{r['batch_k8_cold_s'] * 1e3:.0f} ms",
            f"{ex['epoch_retrieval_s']:.1f} s (extrap.)",
            "-" if r["agreement_with_ram"] is None else f"{r['agreement_with_ram']:.0%}",
        )
    Console(width=170).print(t)
    for r in result["summary"]:
        if "extra" in r:
            _print_extras(r["d"], r["extra"])


def _print_extras(d: int, ex: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"mapped flat index, one window at D={d} ({ex['file_bytes'] / 1e9:.2f} GB)")
    t.add_column("measurement")
    t.add_column("seconds", justify="right")
    for advice, secs in ex["advice_cold_search_s"].items():
        t.add_row(f"cold first search (K=8, 48 queries), mapping advised {advice}", f"{secs:.3f}")
    for phase in ("cold", "warm"):
        ratio = ex[f"flat_search_{phase}_s"] / ex[f"numpy_pass_{phase}_s"]
        t.add_row(
            f"{phase}: flat search / one NumPy pass over the file",
            f"{ex[f'flat_search_{phase}_s']:.3f} / {ex[f'numpy_pass_{phase}_s']:.3f} = {ratio:.2f}x",
        )
    for kind, rec in ex["recall"].items():
        t.add_row(
            f"{kind}: recall@1 / recall@8 vs flat, bytes",
            f"{rec['recall@1']:.3f} / {rec['recall@8']:.3f}, {rec['bytes'] / 1e9:.2f} GB",
        )
    Console(width=170).print(t)


def markdown(result: dict[str, Any]) -> str:
    """The README's table: design | peak RAM | disk | per-batch retrieval | epoch | agreement."""
    rows = [r for r in result["summary"] if "failed" not in r and not r.get("phase")]
    lines = [
        "| design | D | peak RAM, anonymous (measured) | peak RSS (measured) | disk, 331 windows (extrapolated) "
        "| batch K=8 warm (x design 1) | batch K=8 cold (x design 1) | batch K=1 warm | epoch retrieval, 331 windows "
        "(extrapolated) | index rebuild per epoch (extrapolated) | same neighbours as design 1 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    base = {r["d"]: r for r in rows if r["design"] == BASELINE}
    for r in rows:
        b = base.get(r["d"])
        ex = r["extrapolated"]
        ram_all = ex["ram_all_windows_bytes"]
        ram = f"{r['peak_anon'] / 1e9:.2f} GB ({r['windows_measured']} window{'s' * (r['windows_measured'] > 1)})"
        if ram_all:
            ram += f"; {ram_all / 1e12:.2f} TB for 331 (extrapolated)"
        rebuild = ex["epoch_rebuild_s"]
        lines.append(
            f"| {DESIGNS[r['design']].label} | {r['d']} | {ram} | {r['peak_rss'] / 1e9:.2f} GB | "
            f"{ex['disk_all_windows_bytes'] / 1e9:,.0f} GB | "
            f"{r['batch_k8_warm_s'] * 1e3:,.0f} ms ({r['batch_k8_warm_s'] / b['batch_k8_warm_s']:.2f}x) | "
            f"{r['batch_k8_cold_s'] * 1e3:,.0f} ms ({r['batch_k8_cold_s'] / b['batch_k8_cold_s']:.2f}x) | "
            f"{r['batch_k1_warm_s'] * 1e3:,.0f} ms | {ex['epoch_retrieval_s'] / 3600:.1f} h | "
            f"{'-' if rebuild is None else f'{rebuild / 3600:.1f} h'} | {r['agreement_with_ram']:.0%} |"
        )
    return "\n".join(lines)


def readme_section(result: dict[str, Any]) -> str:
    """The README's benchmark section (table and what it says), from a result file."""
    rows = {(x["design"], x["d"]): x for x in result["summary"] if not x.get("phase") and "failed" not in x}
    b = {x["design"]: x for x in result["summary"] if x.get("phase")}
    ex192, ex384 = rows[("faiss", 192)]["extra"], rows[("faiss", 384)]["extra"]
    p, m = result["panel"], result["machine"]

    def ms(x: float) -> str:
        return f"{x * 1e3:.0f} ms"

    def part(design: str, name: str, phase: str = "warm") -> str:
        return ms(rows[(design, 192)][f"batch_k8_parts_{phase}"][name])

    adv = ex192["advice_cold_search_s"]
    adv384 = ex384["advice_cold_search_s"]
    rec, rec384 = ex192["recall"], ex384["recall"]
    return f"""`python -m benchmarks.designs` ran the four designs on the same simulated panel (msprime,
{p["haplotypes"]} haplotypes, {p["sites"]:,} sites in {p["windows"]} windows of 455 sites padded to {p["max_seq_len"]} tokens,
the real chr21 shape; store {p["store_bytes"] / 1e6:.1f} MB, built in {p["store_build_s"]:.0f} s) with the same queries
(24 target samples x 2 haplotypes, masked at rate 0.3), each design in its own process with its
memory sampled from outside every 10 ms. Machine: {m["cpu"]}, {m["cores"]} cores, {m["memory_bytes"] / 2**30:.0f} GiB, CPU only;
faiss-cpu {m["versions"]["faiss-cpu"]}, torch {m["versions"]["torch"]}. Full dimension on 2 windows (D = 192) and 1 window
(D = 384); sizes and epoch times for 331 windows are **extrapolated** linearly from those
windows, as marked; everything else is measured. Raw figures: `benchmarks/results/designs.json`
(`python -m benchmarks.designs --readme benchmarks/results/designs.json` prints this section).

{markdown(result)}

![memory over time, peak RAM, disk and batch latency per design](benchmarks/results/designs.png)

What the figures say:

- **RAM.** Design 1 needs {rows[("ram", 192)]["extrapolated"]["ram_all_windows_bytes"] / 1e12:.2f} TB for 331 windows at D = 192 (the OOM at window 54 of a
  256 GB server); design 2 holds 5.5 GB of int64 tokens plus one loaded index. vcfstore's designs
  peak at {rows[("faiss", 192)]["peak_anon"] / 1e9:.2f} GB (FAISS, mapped) and {rows[("exact", 192)]["peak_anon"] / 1e9:.2f} GB (exact) of anonymous memory at D = 192,
  most of it the interpreter, torch and the batch's on-demand encoding; the mapped index pages
  show in RSS ({rows[("faiss", 192)]["peak_rss"] / 1e9:.2f} GB), where the kernel can reclaim them.
- **Per batch.** With K = 8 every design but 1 encodes the unique retrieved rows (up to 384) with
  gradients: {part("exact", "encode")} of the exact design's {ms(rows[("exact", 192)]["batch_k8_warm_s"])} at D = 192. The searches themselves:
  exact {part("exact", "search")}, in-RAM flat {part("ram", "search")} (+{part("ram", "encode_queries")} to encode the queries), mapped flat
  {part("faiss", "search")} (queries included; identical haplotypes make ties that need a second, full scan).
  At K = 1 the exact design takes {ms(rows[("exact", 192)]["batch_k1_warm_s"])} a batch against {ms(rows[("ram", 192)]["batch_k1_warm_s"])} for design 1. A cold batch
  (first after a window switch, page cache dropped) of design 2 pays the {part("disk", "load", "cold")} copy of the
  index into RAM.
- **Epoch.** Measured over all {p["windows"]} windows at reduced D = 4 (window-grouped batches, one cold
  and the rest warm), scaled to 331 windows: exact {b["exact"]["epoch_retrieval_s_331_windows"]:.0f} s, mapped FAISS
  {b["faiss"]["epoch_retrieval_s_331_windows"]:.0f} s, both under {max(b["exact"]["peak_anon"], b["faiss"]["peak_anon"]) / 1e9:.2f} GB of anonymous memory (FAISS with {b["faiss"]["disk_bytes_measured"] / 1e9:.1f} GB of
  index files, built in {b["faiss"]["build_s"]:.0f} s). At full D the epoch estimates in the table are dominated
  by encoding; the old designs also rebuild every index each epoch as the masks change
  (extrapolated {rows[("ram", 192)]["extrapolated"]["epoch_rebuild_s"] / 3600:.1f} h at D = 192 for design 1), which the exact design never does.
- **Agreement.** Every design returns the same neighbours as design 1 on every query (same
  indices, or the same distances within FAISS's float32 rounding).
- **The mapped flat index** (one window, {ex192["file_bytes"] / 1e9:.2f} GB at D = 192): a cold first search took
  {adv["random"]:.2f} s with FAISS's `MADV_RANDOM`, {adv["normal"]:.2f} s re-advised normal, {adv["sequential"]:.2f} s sequential (the
  default) and {adv["willneed"]:.2f} s with `MADV_WILLNEED` (at D = 384: {adv384["random"]:.1f}, {adv384["normal"]:.1f}, {adv384["sequential"]:.2f} and
  {adv384["willneed"]:.1f} s). Warm, the search takes {ex192["flat_search_warm_s"]:.3f} s against {ex192["numpy_pass_warm_s"]:.3f} s for one NumPy pass
  over the same mapped file ({ex192["flat_search_warm_s"] / ex192["numpy_pass_warm_s"]:.2f}x the memory-bandwidth bound; {ex384["flat_search_warm_s"] / ex384["numpy_pass_warm_s"]:.2f}x at D = 384).
- **Approximate kinds** (tie-aware recall of the K = 8 queries against the flat index): fp16
  recall@1 {rec["fp16"]["recall@1"]:.3f}, recall@8 {rec["fp16"]["recall@8"]:.3f} at D = 192 ({rec384["fp16"]["recall@1"]:.3f} / {rec384["fp16"]["recall@8"]:.3f} at D = 384) for half the bytes;
  IVF16,Flat {rec["IVF16,Flat"]["recall@1"]:.3f} / {rec["IVF16,Flat"]["recall@8"]:.3f} ({rec384["IVF16,Flat"]["recall@1"]:.3f} / {rec384["IVF16,Flat"]["recall@8"]:.3f}), and it cannot be memory-mapped."""


def _gb(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e9:.2f} GB"


def plot(result: dict[str, Any], path: Path) -> None:
    """Memory over time per design (phase A, largest D) and log-scale bars of RAM, disk, latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 4.5))
    d_max = max(r["d"] for r in result["summary"] if not r.get("phase"))
    for r in result["timelines"]:
        if r["d"] == d_max:
            tl = np.asarray(r["timeline"])
            axes[0].plot(tl[:, 0], tl[:, 2] / 1e9, label=r["design"], color=DESIGNS[r["design"]].color)
    axes[0].set(title=f"anonymous memory over time (D={d_max})", xlabel="s", ylabel="GB")
    axes[0].legend()
    rows = [r for r in result["summary"] if "failed" not in r and not r.get("phase") and r["d"] == d_max]
    names = [r["design"] for r in rows]
    bars = {
        "peak anonymous memory, GB (measured)": [r["peak_anon"] / 1e9 for r in rows],
        "disk for 331 windows, GB (extrapolated)": [
            max(r["extrapolated"]["disk_all_windows_bytes"], 1e6) / 1e9 for r in rows
        ],
        "batch retrieval K=8, ms (warm / cold)": [r["batch_k8_warm_s"] * 1e3 for r in rows],
    }
    for ax, (title, values) in zip(axes[1:], bars.items(), strict=True):
        ax.bar(names, values, color=[DESIGNS[n].color for n in names])
        if title.startswith("disk"):
            for x, r in enumerate(rows):
                if not r["extrapolated"]["disk_all_windows_bytes"]:
                    ax.annotate("no index files", (x, 1e-3), ha="center", va="bottom", fontsize=8)
        if "cold" in title:
            ax.scatter(names, [r["batch_k8_cold_s"] * 1e3 for r in rows], color="k", zorder=3, label="cold")
            ax.legend()
        ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
    fig.suptitle(
        f"vcfstore retrieval designs at D={d_max}: {result['machine']['cpu']}, "
        f"{result['panel']['haplotypes']} haplotypes, {result['panel']['windows']} windows"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
