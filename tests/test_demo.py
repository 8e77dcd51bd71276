"""``vcfstore demo --vcf FILE`` trains on the user's file, not on a simulated panel."""

from __future__ import annotations

import numpy as np

from tests.helpers import vcf_from_arrays
from vcfstore.app.demo import run_demo


def test_demo_trains_on_the_given_vcf(tmp_path, sim_arrays):
    alleles, positions = sim_arrays  # 100 samples
    vcf = vcf_from_arrays(tmp_path / "mine.vcf.gz", alleles[:, :1500], positions[:1500], contig="7")
    lines: list[str] = []
    run_demo(vcf_path=vcf, out_dir=tmp_path / "store", train_steps=4, echo=lines.append)
    text = "\n".join(lines)
    assert "1. reading" in text and "mine.vcf.gz" in text
    (step,) = [line for line in lines if line.startswith("5. training")]
    assert "on mine.vcf.gz: 80 reference and 20 target samples, 1500 sites" in step
    assert f"(positions {positions[0]}..{positions[1499]})" in step and "12 windows" in step
    assert "masked-site accuracy" in lines[-1] and np.isfinite(float(lines[-1].split("loss ")[1].split(" ")[0]))
