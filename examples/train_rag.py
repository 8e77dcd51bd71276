"""Train a small VCF-Bert-like imputation model with K-nearest retrieval, on the CPU.

    python examples/train_rag.py [--steps 300] [--k 1] [--workers 2] [--budget 4GB]

Simulates a panel (msprime), stores 240 samples as the reference and 60 as training targets
over the same sites, and trains with retrieval under a memory budget: every batch retrieves the
K reference haplotypes nearest to each masked query (exact token-space search) and encodes their
complete tokens with gradients. Prints loss and masked-site accuracy as they improve, then the
peak memory. The code is in ``vcfstore/train_example.py``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from vcfstore.app.train_example import split_panel, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--k", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=24)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--budget", default="4GB", help="memory budget of the training process (e.g. 4GB, 80%%)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="vcfstore-train-") as tmp:
        ref, tgt = split_panel(Path(tmp))
        print(f"reference {ref}\ntargets   {tgt}")
        r = train(
            ref,
            tgt,
            steps=args.steps,
            k=args.k,
            batch_size=args.batch_size,
            workers=args.workers,
            budget=args.budget,
            seed=args.seed,
        )
    print(
        f"loss {r.first_loss:.4f} -> {r.last_loss:.4f}, masked-site accuracy {r.first_accuracy:.3f} -> "
        f"{r.last_accuracy:.3f} in {r.steps} steps ({r.seconds:.0f} s)"
    )
    print(
        f"peak anonymous memory of the training process: {r.peak_anon / 2**20:.0f} MiB "
        f"(budget {r.budget_report['limit'] / 2**30:.2f} GiB)"
    )


if __name__ == "__main__":
    main()
