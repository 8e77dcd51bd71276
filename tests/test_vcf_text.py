"""The fast text path of the VCF reader against cyvcf2's own reading of the same files.

The oracle is the reader's cyvcf2 path: every record the input filter is handed (contig,
position, ID, REF, ALT, alleles, phase) and every error must be the same whichever path read
the file, on generated files full of the cases the text path leaves to cyvcf2, and on the real
1000 Genomes files.
"""

from __future__ import annotations

import gzip
import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vcfstore as vs
from tests.helpers import vcf_from_arrays
from vcfstore.sources import vcf as vcf_module
from vcfstore.sources import vcf_text
from vcfstore.sources.policy import RecordFilter

# Every policy that lets records through: the filter is handed every record and raises only for
# what no policy accepts (ploidy, order, allele numbers), so the comparison sees nearly all input.
LENIENT = vs.InputPolicy(multiallelic="split", non_snv="keep", unphased="keep", missing="mask", duplicates="skip")


class _NoText:
    """A stand-in for the text parser that leaves every record to cyvcf2."""

    supported, records = False, 0

    def __init__(self, *args: object) -> None:
        pass


def _handed(path, monkeypatch, *, text: bool, rows=None):
    """What the filter is handed, concatenated over blocks, and the error that ended the read (or None)."""
    seen: list = []
    call = RecordFilter.__call__

    def capture(self, contigs, positions, ids, refs, alts, gt, phased, info_af):
        seen.append(
            (
                list(contigs),
                list(positions),
                list(ids),
                list(refs),
                [list(a) for a in alts],
                gt.astype(np.int64),
                phased.copy(),
            )
        )
        return call(self, contigs, positions, ids, refs, alts, gt, phased, info_af)

    fill = vcf_text.TextRecords.fill

    def counted(self, buffer):
        out = fill(self, buffer)
        parsed.append(out[-1])
        return out

    parsed: list[int] = []
    with monkeypatch.context() as m:
        m.setattr(RecordFilter, "__call__", capture)
        m.setattr(vcf_text.TextRecords, "fill", counted)
        m.setattr(vcf_module, "TextRecords", vcf_text.TextRecords if text else _NoText)
        if rows is not None:
            m.setattr(vcf_module, "RAW_BUFFER_BYTES", rows * 8 * len(vs.VcfSource(path).samples))
        source = vs.VcfSource(path, policy=LENIENT)
        source.filter.info_af = False  # as a build that does not take INFO/AF: the text path's case
        error = None
        try:
            for _ in source.blocks():
                pass
        except vs.InputError as e:
            error = str(e)
    _handed.text_records = sum(parsed)  # type: ignore[attr-defined]  # records the text parser read
    if not seen:
        return [], error, dict(source.filter.counts)
    columns = [list(itertools.chain.from_iterable(s[k] for s in seen)) for k in range(5)]
    arrays = [np.concatenate([s[k] for s in seen]) for k in (5, 6)]
    return [*columns, *arrays], error, dict(source.filter.counts)


def _assert_same(path, monkeypatch, rows=None) -> int:
    """Both paths hand the filter the same records and end with the same counts or the same error.

    After an error the counts and the records handed depend on where blocks end (a block is
    refused whole), so an input that fails is compared again in blocks of one record: then
    both paths fail at the same record with the same message. Returns the records the text
    parser read.
    """
    got, got_error, got_counts = _handed(path, monkeypatch, text=True, rows=rows)
    text_records = _handed.text_records  # type: ignore[attr-defined]
    want, want_error, want_counts = _handed(path, monkeypatch, text=False, rows=rows)
    if got_error is not None or want_error is not None:
        got, got_error, got_counts = _handed(path, monkeypatch, text=True, rows=1)
        want, want_error, want_counts = _handed(path, monkeypatch, text=False, rows=1)
        assert got_error is not None
    assert got_error == want_error
    assert got_counts == want_counts
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        if isinstance(w, np.ndarray):
            np.testing.assert_array_equal(g, w)
        else:
            assert g == w
    return text_records


def _write(path, lines, compression):
    text = "".join(lines).encode("utf-8", "surrogateescape")  # "\udce9" writes the byte 0xE9
    if compression == "plain":
        path.write_bytes(text)
        return path
    if compression == "gzip":
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(text))
        return path
    import pysam

    path.write_bytes(text)
    out = path.with_name(path.name + ".gz")
    pysam.tabix_compress(str(path), str(out), force=True)  # BGZF: many gzip members
    return out


HEADER = [
    "##fileformat=VCFv4.2\n",
    '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n',
    '##FORMAT=<ID=DP,Number=1,Type=Integer,Description="Depth">\n',
    '##INFO=<ID=AC,Number=A,Type=Integer,Description="Count">\n',
    "##contig=<ID=1>\n##contig=<ID=chr2>\n",
]
# The calls the text path reads, and those it leaves to cyvcf2 (other ploidy, several digits, '.'
# alone, a leading zero, another field after GT).
CALLS = ["0|0", "0|1", "1|0", "1|1", "0/1", "1/1", ".|.", "./.", ".|1", "0|.", "2|1", "1/2", "3|0"]
ODD_CALLS = ["10|0", "0|12", "1", ".", "0|1|1", "01|0", "0|1:7", "0 |1", "0|1 "]


@st.composite
def vcf_files(draw):
    n_samples = draw(st.integers(1, 4))
    lines = [
        *HEADER,
        "\t".join(
            ["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT"]
            + [f"s{i}" for i in range(n_samples)]
        )
        + "\n",
    ]
    pos, contig = 10, "1"
    odd = draw(st.floats(0, 0.3))
    for _ in range(draw(st.integers(1, 25))):
        pos += draw(st.sampled_from([0, 1, 1, 5]))
        if draw(st.integers(0, 30)) == 0:
            contig, pos = "chr2", 3
        alleles = [("A", "G"), ("A", "G,T"), ("AT", "A"), ("C", "."), ("g", "a"), ("A", "C,<DEL>")]
        ref, alt = draw(st.sampled_from(alleles))
        vid = draw(st.sampled_from([".", "rs1", "id;x"]))
        fmt, pos_text = "GT", str(pos)
        calls = [draw(st.sampled_from(CALLS)) for _ in range(n_samples)]
        if draw(st.floats(0, 1)) < odd:
            case = draw(st.sampled_from(["call", "format", "crlf", "columns", "hash", "pos"]))
            if case == "call":
                calls[draw(st.integers(0, n_samples - 1))] = draw(st.sampled_from(ODD_CALLS))
            elif case == "format":
                fmt = draw(st.sampled_from(["GT:DP", "DP:GT", "HP"]))  # HP: calls that are not GT
                calls = {"GT:DP": [f"{c}:5" for c in calls], "DP:GT": [f"5:{c}" for c in calls]}.get(fmt, calls)
            elif case == "columns":
                calls = [*calls, "0|0"] if draw(st.booleans()) else calls[:-1] or ["0|0", "0|0"]
            elif case == "hash":
                contig = "#1"
            else:
                pos_text = draw(st.sampled_from(["+{}", "0{}", "{}a", "{}.0"])).format(pos)
        line = "\t".join([contig, pos_text, vid, ref, alt, ".", "PASS", "AC=1", fmt, *calls])
        if contig == "#1":
            contig = "1"
        if draw(st.floats(0, 1)) < odd and draw(st.booleans()):
            line += "\r"  # a CRLF line end
        lines.append(line + "\n")
    if draw(st.booleans()):
        lines[-1] = lines[-1].rstrip("\n")  # no line end after the last record
    return lines


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=vcf_files(), compression=st.sampled_from(["plain", "gzip", "bgzf"]), rows=st.sampled_from([2, 3, 1024]))
def test_text_path_hands_the_filter_what_cyvcf2_does(tmp_path, monkeypatch, lines, compression, rows):
    """Generated files with every call form, odd records anywhere (where cyvcf2 reads on), three
    compressions and blocks of 2, 3 or many records: the same records, calls, counts and errors."""
    path = _write(tmp_path / "gen.vcf", lines, compression)
    _assert_same(path, monkeypatch, rows=rows)


@pytest.mark.parametrize(
    "odd",
    [
        "1\t25\t.\tA\tG\t.\tPASS\t.\tHP\t0|1\t1|0",  # calls of another field
        "1\t25\t.\tA\tG\t.\tPASS\t.\tGT:DP\t0|1:3\t1|0:4",
        "1\t25\t.\tA\tG\t.\tPASS\t.\tDP:GT\t3:0|1\t4:1|0",
        "1\t25\t.\tA\tG\t.\tPASS\tGT\t0|1\t1|0",  # a column short before FORMAT
        "1\t25\t.\tA\tG\t.\tPASS\t.\t.\tGT\t0|1\t1|0",  # a column more before FORMAT
        "1\t25\t.\tA\tG\t.\tPASS\t.\tGT\t0|1",  # a sample short
        "1\t25\t.\tA\tG\t.\tPASS\t.\tGT\t0|1\t1|0\t0|0",  # a sample more
        "1\t25\t.\tA\tG\t.\tPASS\t.\tGT\t0|1\t1|0\r",
        "1\t25\t.\tA\tG,T,C,A,G,T,C,A,G,T\t.\tPASS\t.\tGT\t10|1\t1|0",
        "1\t25\t.\tA\tG\t.\tPASS\t.\tGT\t1\t1|0",
        "1\t25\t.\tA\tG\t.\tPASS\t.\tGT\t0|1|0\t1|0|0",
        "1\t25\t.\tA\tG\t.\tPASS\t.\tGT\t.\t1|0",
        "1\t25\t.\tA\t\t.\tPASS\t.\tGT\t0|1\t1|0",  # an empty ALT
        "1\t25\t.\tA\tC,,T\t.\tPASS\t.\tGT\t0|3\t1|0",  # an empty ALT among others (htslib: ".")
        "1\t25\t.\tA\tC,.,T\t.\tPASS\t.\tGT\t0|3\t1|0",
        "1\t25\t.\tA\tG\t.\tPASS\tDP=1\0\0\0\tGT\t0|1\t1|0",  # NUL: htslib ends the line there
        "1\t4294967306\t.\tA\tG\t.\tPASS\t.\tGT\t0|1\t1|0",  # past 2^32
        "1\t123456789012345678901\t.\tA\tG\t.\tPASS\t.\tGT\t0|1\t1|0",  # past 2^63
        "chr,3\t25\t.\tA\tG\t.\tPASS\t.\tGT\t0|1\t1|0",  # a contig name htslib refuses
        "chrUn_x\t25\t.\tA\tG\t.\tPASS\t.\tGT\t0|1\t1|0",  # undeclared, and a valid name
        # FILTER or INFO keys that htslib cannot declare (it refuses the record), and some it can
        "1\t25\t.\tA\tG\t.\ta,b\t.\tGT\t0|1\t1|0",
        "1\t25\t.\tA\tG\t.\tq10;a>b\t.\tGT\t0|1\t1|0",
        "1\t25\t.\tA\tG\t.\tPASS\ta<b=1\tGT\t0|1\t1|0",
        "1\t25\t.\tA\tG\t.\tPASS\tAF=0.5,0.2;k,x\tGT\t0|1\t1|0",
        '1\t25\t.\tA\tG\t.\ta b;a-b\tAF=0.5,0.2;a b=1;1000G;=5;"a"=1\tGT\t0|1\t1|0',
        "1\t+25\t.\tA\tG\t.\tPASS\t.\tGT\t0|1\t1|0",
        "#1\t25\t.\tA\tG\t.\tPASS\t.\tGT\t0|1\t1|0",
        "1\t25\tid\u00e9\tA\tG\t.\tPASS\t.\tGT\t0|1\t1|0",  # not ASCII (UTF-8 here)
        "1\t25\tid\udce9\tA\tG\t.\tPASS\t.\tGT\t0|1\t1|0",  # not UTF-8 (Latin-1 bytes)
        "1\t25\t.\tA\tG\t.\tPASS\tGENE=Caf\udce9\tGT\t0|1\t1|0",
        "",  # an empty line
        # exactly as wide as two calls, but not calls: each fails one check of the text path
        "1\t25\t.\tA\tG\t.\tPASS\t.\tGT\tA|1\t1|0",
        "1\t25\t.\tA\tG\t.\tPASS\t.\tGT\t-|1\t1|0",
        "1\t25\t.\tA\tG\t.\tPASS\t.\tGT\t/|1\t1|0",
        "1\t25\t.\tA\tG\t.\tPASS\t.\tGT\t0:1\t1|0",
        "1\t25\t.\tA\tG\t.\tPASS\t.\tGT\t0|1 1|0",
    ],
)
@pytest.mark.parametrize("compression", ["plain", "bgzf"])
def test_each_record_the_text_path_leaves_to_cyvcf2(tmp_path, monkeypatch, odd, compression):
    """Each kind of record the text path does not read, between ordinary ones: the same as cyvcf2."""
    good = [f"1\t{p}\t.\tA\tG\t.\tPASS\t.\tGT\t0|1\t1|0\n" for p in (10, 20, 30, 40)]
    columns = ["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT", "a", "b"]
    lines = [*HEADER, "\t".join(columns) + "\n", *good[:2], odd + "\n", *good[2:]]
    assert _assert_same(_write(tmp_path / "odd.vcf", lines, compression), monkeypatch) >= 2


def test_text_path_reads_on_with_cyvcf2_after_an_odd_record(tmp_path, monkeypatch):
    """A record the text path leaves to cyvcf2 in the middle of a panel: the records before it come
    from the text parser, the rest from cyvcf2, and together they equal cyvcf2's reading."""
    rng = np.random.default_rng(1)
    alleles = rng.integers(0, 2, size=(40, 600), dtype=np.uint8)
    path = vcf_from_arrays(tmp_path / "panel.vcf.gz", alleles, np.arange(1, 601) * 10)
    lines = gzip.decompress(path.read_bytes()).decode().splitlines(keepends=True)
    header = sum(line.startswith("#") for line in lines)
    fields = lines[header + 450].split("\t")
    fields[4], fields[9] = "C,T,G,A,C,T,G,A,C,T", "10|0"  # an allele of two digits: cyvcf2 from here
    lines[header + 450] = "\t".join(fields)
    odd = _write(tmp_path / "odd.vcf", lines, "gzip")
    text_records = _assert_same(odd, monkeypatch, rows=100)
    assert text_records == 450  # the text parser read up to the odd record and no further


@pytest.mark.parametrize("name", ["reference.vcf.gz", "unphased.vcf.gz"])
def test_text_path_on_real_files(real_data, monkeypatch, name):
    """The real 1000 Genomes files (BGZF, INFO fields, phased and unphased): every record the same."""
    _assert_same(real_data / name, monkeypatch)


def test_truncated_or_corrupt_gzip_is_refused(tmp_path, monkeypatch):
    """A plain gzip file cut short, or with damaged bytes, is refused by the text path's inflater."""
    rng = np.random.default_rng(2)
    path = vcf_from_arrays(tmp_path / "p.vcf.gz", rng.integers(0, 2, (20, 3000), dtype=np.uint8), np.arange(1, 3001))
    data = path.read_bytes()
    cut = tmp_path / "cut.vcf.gz"
    cut.write_bytes(data[: len(data) * 2 // 3])
    damaged = tmp_path / "damaged.vcf.gz"
    damaged.write_bytes(data[:5000] + bytes(b ^ 0x5A for b in data[5000:5400]) + data[5400:])
    for bad in (cut, damaged):
        with pytest.raises(vs.InputError, match="truncated or corrupt"):
            vs.build_store(vs.VcfSource(bad), tmp_path / "out", progress=False)
        assert not (tmp_path / "out").exists()


def test_text_path_across_tiny_pieces(tmp_path, monkeypatch):
    """Pieces of a few bytes (compressed and inflated): lines, the header and the #CHROM line split
    anywhere across pieces read as cyvcf2 reads them, and the text parser reads every record."""
    rng = np.random.default_rng(3)
    path = vcf_from_arrays(tmp_path / "p.vcf.gz", rng.integers(0, 2, (6, 300), dtype=np.uint8), np.arange(1, 301))
    for piece, text in ((7, 13), (64, 5), (1, 1)):
        monkeypatch.setattr(vcf_text, "_PIECE", piece)
        monkeypatch.setattr(vcf_text, "_TEXT", text)
        assert _assert_same(path, monkeypatch, rows=32) == 300


@pytest.mark.parametrize(
    ("header_line", "read"),
    [
        ('##FORMAT=<ID=GT,Number=1,Type=Integer,Description="Genotype">', 0),
        ('##FORMAT=<Number=1,ID=GT,Type=Integer,Description="Genotype">', 0),  # keys in any order
        ('##FORMAT=<ID=GT,Number=1,Type=Integer,Description="Type=String">', 0),
        ('##FORMAT=<ID=PGT,Number=1,Type=Integer,Description="GT">', 2),  # another field
        ('##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype, phased">', 2),
        ("##contig=<ID=chr<>", 1),  # a contig line htslib cannot read: cyvcf2 refuses its records
    ],
)
def test_header_declarations(tmp_path, monkeypatch, header_line, read):
    """GT declared other than a String (htslib refuses every record) or a contig line htslib cannot
    read: cyvcf2 reads from there and says so; other declarations leave the text parser reading."""
    columns = ["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT", "a"]
    records = ["1\t10\t.\tA\tG\t.\tPASS\t.\tGT\t0|1\n", "chr<\t20\t.\tA\tG\t.\tPASS\t.\tGT\t0|1\n"]
    if "chr<" not in header_line:
        records[1] = records[1].replace("chr<", "1")
    lines = [HEADER[0], header_line + "\n", *HEADER[1:], "\t".join(columns) + "\n", *records]
    assert _assert_same(_write(tmp_path / "h.vcf", lines, "plain"), monkeypatch) == read
