"""Tables for people: store summaries and benchmark figures, printed with rich."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console
from rich.table import Table

from vcfstore.memory.budget import format_bytes


def print_store_info(s: dict[str, Any]) -> None:
    """Print the summary that :meth:`PanelStore.info` returns as a table."""
    table = Table(title=f"panel store {s['path']}", show_header=False)
    w = s["window_sites"]
    rows = [
        ("samples / haplotypes", f"{s['n_samples']:,} / {s['n_haplotypes']:,}"),
        ("sites", f"{s['n_sites']:,} on {', '.join(s['contigs'])}"),
        ("windows", f"{s['n_windows']:,} (sites per window {w['min']}..{w['max']}, mean {w['mean']:.0f})"),
        ("max_seq_len", str(s["max_seq_len"])),
        ("AF from", s["af_source"]),
        ("input", f"{s['input']['name']} ({s['input']['size']:,} bytes)"),
        ("ingest", ", ".join(f"{k} {v:,}" for k, v in sorted(s["ingest"].items()) if v)),
        ("bytes on disk", f"{s['bytes_total']:,} (alleles {s['bytes_on_disk'].get('alleles', 0):,})"),
        ("bits per genotype", f"{s['bits_per_genotype']:.4f}"),
        ("vs int64 tokens", f"{s['ratio_vs_int64_tokens']:,.0f}x smaller"),
        ("format version", str(s["format_version"])),
        (
            "files",
            "DAMAGED: " + "; ".join(s["damage_seen_without_reading"])
            if s["damage_seen_without_reading"]
            else "all present with their recorded sizes (contents: vcfstore verify)",
        ),
    ]
    for k, v in rows:
        table.add_row(k, v)
    Console().print(table)


def budget_table(r: dict[str, Any]) -> str:
    """A :meth:`MemoryBudget.report <vcfstore.MemoryBudget.report>` as a readable table."""
    t = Table(title=f"memory budget ({r['limit_source']})")
    t.add_column("what")
    t.add_column("anonymous", justify="right")
    t.add_column("mapped", justify="right")
    t.add_row("limit", format_bytes(r["limit"]), format_bytes(r["mapped_limit"]))
    t.add_row("soft level", format_bytes(r["soft_limit"]), "")
    t.add_row("now", format_bytes(r["anon"]), format_bytes(r["mapped"]))
    t.add_row("peak", format_bytes(r["peak_anon"]), format_bytes(r["peak_mapped"]))
    for name, u in r["consumers"].items():
        ev = r["evictions"].get(name, 0)
        t.add_row(f"  {name} ({ev} evictions)", format_bytes(u["anon"]), format_bytes(u["mapped"]))
    console = Console(width=100, record=True, file=io.StringIO())  # recorded, never printed
    console.print(t)
    return console.export_text()
