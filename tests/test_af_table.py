"""Allele frequencies from an external table (TSV/CSV by site) or a NumPy array, validated."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from click.testing import CliRunner

import vcfstore as vs
from tests.helpers import vcf_from_arrays
from vcfstore.app.cli import main
from vcfstore.store.af_table import AfTable

BASES = "ACGT"


@pytest.fixture(scope="module")
def panel(sim_arrays, tmp_path_factory):
    """The first 600 simulated sites with random REF/ALT bases: (alleles, positions, refs, alts)."""
    alleles, positions = sim_arrays
    alleles, positions = alleles[:, :600], positions[:600]
    rng = np.random.default_rng(3)
    r = rng.integers(0, 4, len(positions))
    a = (r + rng.integers(1, 4, len(positions))) % 4
    return alleles, positions, [BASES[i] for i in r], [BASES[i] for i in a]


def _build(tmp_path, panel, af_from, name="s"):
    alleles, positions, refs, alts = panel
    return vs.build_from_arrays(
        alleles, positions, tmp_path / name, contigs="20", refs=refs, alts=alts, af_from=af_from, window_size=200
    )


def _write_table(path, rows, sep="\t", header=("CHROM", "POS", "REF", "ALT", "AF")):
    text = sep.join(header) + "\n" + "".join(sep.join(str(x) for x in r) + "\n" for r in rows)
    if str(path).endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def test_table_by_site_with_swaps_prefixes_order_and_extra_rows(tmp_path, panel):
    """Every panel site gets its table AF (1 - AF where the table has REF/ALT swapped); extra rows are ignored."""
    _, positions, refs, alts = panel
    rng = np.random.default_rng(5)
    want = rng.random(len(positions)).astype(np.float32)
    swapped = rng.random(len(positions)) < 0.3
    rows = []
    for i, p in enumerate(positions):
        a, b, f = (alts[i], refs[i], 1 - float(want[i])) if swapped[i] else (refs[i], alts[i], float(want[i]))
        rows.append(("chr20", int(p), a, b, repr(f)))
    rows += [("chr20", int(positions[-1]) + 10 + j, "A", "C", 0.5) for j in range(20)]  # sites the panel lacks
    rows += [("chr21", 100, "A", "C", 0.5)]  # another chromosome
    rng.shuffle(rows)
    for name, sep in (("t.tsv", "\t"), ("t.csv.gz", ",")):
        s = _build(tmp_path, panel, _write_table(tmp_path / name, rows, sep), name=f"store_{sep == ','}")
        np.testing.assert_allclose(s.af, want, atol=1e-6)
        assert s.meta["params"]["af_from"] == f"table:{name}"
    # The table is part of the build's identity: another table is not resumed into this store.
    other = [(c, p, a, b, 0.25) for c, p, a, b, _ in rows]
    with pytest.raises(vs.StoreError, match=r"another input or parameters|finished store"):
        _build(tmp_path, panel, _write_table(tmp_path / "o.tsv", other), name="store_False")


def test_npy_array_and_its_length(tmp_path, panel):
    want = np.linspace(0, 1, len(panel[1]), dtype=np.float32)
    np.save(tmp_path / "af.npy", want)
    np.testing.assert_array_equal(_build(tmp_path, panel, tmp_path / "af.npy").af, want)
    np.save(tmp_path / "short.npy", want[:-1])
    with pytest.raises(vs.InputError, match="599 entries; the panel kept 600 sites"):
        _build(tmp_path, panel, tmp_path / "short.npy", name="short")
    np.save(tmp_path / "nan.npy", np.where(np.arange(600) == 7, np.nan, want))
    with pytest.raises(vs.InputError, match="hold nan at site 7"):
        _build(tmp_path, panel, tmp_path / "nan.npy", name="nan")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda rows: rows[:-3], r"lacks 3 of the panel's 600 sites \(the first: 20:"),
        (lambda rows: [*rows, rows[4]], "lists 1 sites twice"),
        (lambda rows: [*rows[:9], (*rows[9][:4], "1.5"), *rows[10:]], r"1\.5 at line 11"),
        (lambda rows: [*rows[:9], (*rows[9][:4], "nan"), *rows[10:]], "nan at line 11"),
        (lambda rows: [*rows[:9], (*rows[9][:4], "x"), *rows[10:]], "line 11: af 'x' is not a number"),
        (lambda rows: [*rows[:9], (rows[9][0], "12a", *rows[9][2:]), *rows[10:]], "line 11: position '12a'"),
        (lambda rows: [*rows[:9], rows[9][:3], *rows[10:]], "line 11: 3 fields"),
    ],
)
def test_bad_tables_are_one_line_errors(tmp_path, panel, edit, message):
    _, positions, refs, alts = panel
    rows = [("20", int(p), refs[i], alts[i], "0.5") for i, p in enumerate(positions)]
    path = _write_table(tmp_path / "bad.tsv", edit(rows))
    with pytest.raises(vs.InputError, match=message) as e:
        _build(tmp_path, panel, path)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "s").exists()  # nothing half-built is left behind


def test_bad_headers_and_files(tmp_path, panel):
    with pytest.raises(vs.InputError, match="header must name the columns"):
        AfTable.read(_write_table(tmp_path / "h.tsv", [("20", 1, "A", "C", 0.1)], header=("chrom", "pos", "ref", "af")))
    (tmp_path / "bin.tsv").write_bytes(b"\x1f\x8b\x00garbage")
    with pytest.raises(vs.InputError, match="cannot read AF table"):
        AfTable.read(tmp_path / "bin.tsv")
    with pytest.raises(vs.InputError, match="is not a file"):
        _build(tmp_path, panel, tmp_path / "absent.tsv")


def test_cli_af_from_a_table(tmp_path, panel):
    alleles, positions, _, _ = panel
    vcf = vcf_from_arrays(tmp_path / "p.vcf", alleles, positions, contig="20")
    raw = vcf.read_bytes()
    text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode()
    recs = [line.split("\t") for line in text.splitlines() if not line.startswith("#")]
    want = np.round(np.random.default_rng(1).random(len(recs)), 4)
    table = _write_table(
        tmp_path / "af.csv", [(r[0], r[1], r[3], r[4], f) for r, f in zip(recs, want, strict=True)], ","
    )
    r = CliRunner().invoke(main, ["build", str(vcf), str(tmp_path / "o"), "--af-from", str(table), "--quiet"])
    assert r.exit_code == 0, r.output
    np.testing.assert_allclose(vs.open_store(tmp_path / "o").af, want, atol=1e-6)
    table.write_text("chrom,pos,ref,alt,af\n20,1,A,C,0.1\n")
    r = CliRunner().invoke(main, ["build", str(vcf), str(tmp_path / "o2"), "--af-from", str(table), "--quiet"])
    assert r.exit_code != 0 and "lacks" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1
