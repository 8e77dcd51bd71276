"""The input policy, applied to raw records by one :class:`RecordFilter` for every source.

VCF/BCF (through cyvcf2, i.e. htslib), VCF Zarr (bio2zarr's ``vcf2zarr`` layout), arrays and
tree sequences all go through the same filter, which applies the policy (multiallelic, non-SNV,
unphased, missing, duplicates) and the ordering checks in one place.

A *site* is (contig, position, REF, ALT). Records at one position with different alleles, as
``bcftools norm -m -any`` writes a multiallelic record, are distinct sites and are all kept, in
file order; only a record repeating a site already kept is a duplicate.
"""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from vcfstore.errors import InputError
from vcfstore.sources.base import SiteBlock

_MISSING = -1  # htslib and vcf2zarr: a missing allele
_VECTOR_END = -2  # htslib and vcf2zarr: padding of a call with fewer alleles than the maximum
_ANY_ALT = 0  # the "ALT number" of a collapsed record's site: any ALT allele counts as 1


@dataclass(frozen=True)
class InputPolicy:
    """What to do with records that are not phased, complete, biallelic SNVs.

    Parameters
    ----------
    multiallelic : {"split", "skip", "collapse"}
        Split a record with several ALT alleles into one biallelic site per ALT (the haplotypes
        carrying that ALT get 1, every other haplotype 0), skip it, or collapse it into one site
        where any ALT is 1 (VCF-Bert's loader does this, ``GT[GT > 0] = 1``; its ALT column
        reads ``C,T``). With ``split`` a multiallelic panel and its ``bcftools norm -m -any``
        form give the same store. With ``collapse`` every record is one site, so site indices
        are record indices (as in VCF-Bert's window CSVs) as long as no record is skipped: use
        ``non_snv="keep"`` too. Under ``collapse`` with ``non_snv="skip"`` a record is skipped
        when any of its ALT alleles is not an SNV.
    non_snv : {"skip", "keep"}
        Skip indels and symbolic alleles, or keep them as ordinary biallelic sites.
    unphased : {"error", "skip-site", "keep"}
        A heterozygous call written unphased (``0/1``) stops the build (naming the record), drops
        the site, or is kept in the written allele order. Unphased homozygous calls are
        unambiguous and always accepted.
    missing : {"error", "skip-site", "ref", "mask"}
        A missing allele (``.``) stops the build, drops the site, is read as REF, or is kept
        with a per-haplotype missing flag (:attr:`SiteBlock.missing`; for imputation targets,
        see :mod:`vcfstore.store.align`; a panel store cannot hold it).
    duplicates : {"error", "skip"}
        A record repeating a kept site (same contig, position, REF and ALT) stops the build or
        is dropped (the first is kept). Records at a kept position with other alleles are not
        duplicates.
    """

    multiallelic: Literal["split", "skip", "collapse"] = "split"
    non_snv: Literal["skip", "keep"] = "skip"
    unphased: Literal["error", "skip-site", "keep"] = "error"
    missing: Literal["error", "skip-site", "ref", "mask"] = "error"
    duplicates: Literal["error", "skip"] = "error"

    def __post_init__(self) -> None:
        choices = {
            "multiallelic": ("split", "skip", "collapse"),
            "non_snv": ("skip", "keep"),
            "unphased": ("error", "skip-site", "keep"),
            "missing": ("error", "skip-site", "ref", "mask"),
            "duplicates": ("error", "skip"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise InputError(f"{name} policy must be one of {allowed}, not {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class RecordFilter:
    """Applies an :class:`InputPolicy` and the ordering checks to blocks of raw records.

    Raw records come as parallel lists plus ``gt`` int [n, n_samples, ploidy] with htslib's
    codes (-1 missing, -2 vector end) and ``phased`` bool [n, n_samples].
    """

    policy: InputPolicy
    counts: Counter[str] = field(default_factory=Counter)
    # Whether blocks carry the input's own allele frequency (INFO/AF): a build that does not use
    # it turns this off, and a source may then skip reading it.
    info_af: bool = True
    _contig: str | None = None
    _last_pos: int = -1
    _site_pos: int = -1  # the position of the sites in _site_alleles
    _site_alleles: set[tuple[str, str]] = field(default_factory=set)  # (REF, ALT) kept at _site_pos
    _done_contigs: set[str] = field(default_factory=set)

    def __call__(
        self,
        contigs: Sequence[str],
        positions: Sequence[int],
        ids: Sequence[str],
        refs: Sequence[str],
        alts: Sequence[Sequence[str]],
        gt: np.ndarray,
        phased: np.ndarray,
        info_af: Sequence[Sequence[float] | None] | None,
    ) -> SiteBlock:
        n = len(positions)
        if gt.ndim != 3 or gt.shape[0] != n:
            raise InputError(f"genotype block has shape {gt.shape}; expected ({n}, n_samples, 2)")
        # One pass each says whether any call is missing (or padded), names an allele past the
        # first ALT, or is unphased: usually none does, and the per-record flags are not needed.
        lowest, highest = (int(gt.min()), int(gt.max())) if gt.size else (0, 0)
        if highest > 1:
            self._check_allele_numbers(contigs, positions, ids, alts, gt)
        negative, unphased = lowest < 0, not phased.all()
        missing = (gt == _MISSING).any(axis=(1, 2)) if negative else np.zeros(n, dtype=bool)
        unphased_het, unphased_hom = np.zeros(n, dtype=bool), 0
        if unphased:
            unphased_het = (~phased & (gt[:, :, 0] != gt[:, :, -1])).any(axis=1)
            unphased_hom = int((~phased & (gt[:, :, 0] == gt[:, :, -1])).sum())
        self.counts["unphased_homozygous_calls"] += unphased_hom
        fast = self._plain_block(contigs, positions, refs, alts, gt, missing | unphased_het, negative)
        if fast is not None:
            one = np.ones(len(fast), dtype=np.int16)
            return self._block(contigs, positions, ids, refs, alts, gt, info_af, fast, one)
        out_rows: list[tuple[int, int]] = []  # (record index, ALT number or _ANY_ALT)
        for i in range(n):
            self.counts["records"] += 1
            pos = int(positions[i])
            where = _where(contigs, positions, ids, i)
            self._check_order(contigs[i], pos, where)
            if gt.shape[2] != 2 or (gt[i] == _VECTOR_END).any():
                raise InputError(f"record {where} is not diploid for every sample (mixed or other ploidy)")
            _check_no_allele_named(alts[i], gt[i], where)
            alt_numbers = self._alt_numbers(refs[i], alts[i])
            if not alt_numbers:
                continue
            keys = [_site_key(refs[i], alts[i], k) for k in alt_numbers]
            alt_numbers, keys = self._drop_duplicates(alt_numbers, keys, where, pos)
            if not alt_numbers:
                continue
            if missing[i]:
                if self.policy.missing == "error":
                    raise InputError(f"record {where} has missing genotypes; choose a --missing policy")
                if self.policy.missing == "skip-site":
                    self.counts["skipped_missing"] += 1
                    continue
                self.counts["missing_masked" if self.policy.missing == "mask" else "missing_read_as_ref"] += 1
            if unphased_het[i]:
                if self.policy.unphased == "error":
                    raise InputError(
                        f"record {where} has unphased heterozygous genotypes; "
                        "vcfstore needs phased haplotypes (choose an --unphased policy)"
                    )
                if self.policy.unphased == "skip-site":
                    self.counts["skipped_unphased"] += 1
                    continue
                self.counts["unphased_kept"] += 1
            # Every site after the first at a position, whether split here or by bcftools.
            self.counts["sites_sharing_a_position"] += len(keys) - (0 if self._site_alleles else 1)
            self._site_alleles.update(keys)
            out_rows.extend((i, k) for k in alt_numbers)
        idx, alt_no = np.asarray(out_rows, dtype=np.int64).reshape(-1, 2).T
        return self._block(contigs, positions, ids, refs, alts, gt, info_af, idx, alt_no.astype(np.int16))

    @staticmethod
    def _check_allele_numbers(
        contigs: Sequence[str],
        positions: Sequence[int],
        ids: Sequence[str],
        alts: Sequence[Sequence[str]],
        gt: np.ndarray,
    ) -> None:
        """Refuse a call naming an allele the record does not list (damage, not REF or another ALT).

        Records without an ALT allele are left to the filter, which skips them (none of their calls
        is stored).
        """
        most = gt.reshape(len(gt), -1).max(axis=1)
        # the number of the last ALT allele: padding ("" in VCF Zarr) and "." are no allele
        n_alts = np.array(
            [max((k + 1 for k, a in enumerate(alt) if a not in ("", ".")), default=0) for alt in alts], dtype=np.int64
        )
        bad = np.flatnonzero((most > n_alts) & (n_alts > 0))
        if bad.size:
            i = int(bad[0])
            raise InputError(
                f"record {_where(contigs, positions, ids, i)} has a call with allele {int(most[i])} but lists "
                f"{int(n_alts[i])} ALT allele(s): its genotypes are malformed"
            )

    def _plain_block(
        self,
        contigs: Sequence[str],
        positions: Sequence[int],
        refs: Sequence[str],
        alts: Sequence[Sequence[str]],
        gt: np.ndarray,
        flagged: np.ndarray,
        negative: bool,
    ) -> np.ndarray | None:
        """The common block's kept records (indices), decided with whole-block checks instead of a loop over records.

        Every record on the current contig, one ALT each, positions not decreasing, diploid, no
        missing or unphased heterozygous call, and no two kept sites alike at one position
        (records sharing a position, as ``bcftools norm -m -any`` writes them, are compared
        alone): no record can be an error or a policy case other than the non-SNV one, so the
        records are counted and kept (SNVs, or every record with ``non_snv="keep"``) in one
        step. Any other block returns None and takes the record-by-record path, which names the
        offending record; both give the same sites, counts and state.
        """
        pos = np.asarray(positions, dtype=np.int64)
        n = len(pos)
        # Per-record checks run as C-level map/zip over the lists: no Python call per record.
        if (
            n == 0
            or gt.shape[2] != 2
            or flagged.any()
            or contigs.count(contigs[0]) != n
            or (n > 1 and (np.diff(pos) < 0).any())
            or set(map(len, alts)) != {1}
        ):
            return None
        first = list(map(_FIRST, alts))
        if "." in first or "" in first or (negative and (gt == _VECTOR_END).any()):
            return None
        if contigs[0] != self._contig:  # the block starts a contig (the record-by-record path names a repeat)
            if contigs[0] in self._done_contigs:
                return None
            self._start_contig(contigs[0])
        elif pos[0] < self._last_pos:
            return None
        if self.policy.non_snv == "keep":
            kept = np.arange(n)
        else:
            snv = map(_SNV_PAIRS.__contains__, zip(refs, first, strict=True))
            kept = np.flatnonzero(np.fromiter(snv, dtype=bool, count=n))
        kept_pos = pos[kept]
        # Kept sites at the position of the kept site before them (the first one compared with
        # the sites the last block kept at its last position).
        before = np.concatenate([[self._site_pos if self._site_alleles else -1], kept_pos[:-1]])
        shared = np.flatnonzero(kept_pos == before)
        at_position = {self._site_pos: set(self._site_alleles)}
        members = np.union1d(shared, shared - 1)
        for j in members[members >= 0].tolist():  # only the sites that share a position
            key = _site_key(refs[kept[j]], alts[kept[j]], 1)
            seen = at_position.setdefault(int(kept_pos[j]), set())
            if key in seen:
                return None  # a duplicate site: the record-by-record path decides
            seen.add(key)
        last = int(pos[-1])
        carried = self._site_alleles if last == self._site_pos else set()
        self._site_alleles = carried | {_site_key(refs[i], alts[i], 1) for i in kept[kept_pos == last].tolist()}
        self._last_pos = self._site_pos = last
        self.counts["records"] += len(pos)
        self.counts["sites_sharing_a_position"] += len(shared)
        if len(kept) < len(pos):
            self.counts["skipped_non_snv"] += len(pos) - len(kept)
        return kept

    def _start_contig(self, contig: str) -> None:
        if self._contig is not None:
            self._done_contigs.add(self._contig)
        self._contig, self._last_pos, self._site_pos, self._site_alleles = contig, -1, -1, set()

    def _check_order(self, contig: str, pos: int, where: str) -> None:
        if contig != self._contig:
            if contig in self._done_contigs:
                raise InputError(f"record {where}: contig {contig} appears again after other contigs (unsorted input)")
            self._start_contig(contig)
        if pos < self._last_pos:
            raise InputError(f"record {where} comes after position {self._last_pos}: positions are not sorted")
        self._last_pos = pos
        if pos != self._site_pos:
            self._site_pos, self._site_alleles = pos, set()

    def _drop_duplicates(
        self, alt_numbers: list[int], keys: list[tuple[str, str]], where: str, pos: int
    ) -> tuple[list[int], list[tuple[str, str]]]:
        """The record's sites that are not already kept at this position (a duplicate is an error by default)."""
        keep_numbers, keep_keys = [], []
        seen = set(self._site_alleles)
        for k, key in zip(alt_numbers, keys, strict=True):
            if key in seen:
                if self.policy.duplicates == "error":
                    raise InputError(
                        f"record {where} repeats the site {key[0]}>{key[1]} of an earlier record "
                        "(duplicate site: same contig, position, REF and ALT; --duplicates skip drops it)"
                    )
                self.counts["skipped_duplicate"] += 1
                continue
            seen.add(key)
            keep_numbers.append(k)
            keep_keys.append(key)
        return keep_numbers, keep_keys

    def _alt_numbers(self, ref: str, alts: Sequence[str]) -> list[int]:
        """The ALT numbers (1-based, or ``_ANY_ALT``) that become sites of this record, counting what is skipped."""
        # ALT numbers as the calls give them: a "." among the ALTs keeps its number, and no site
        numbered = [(k + 1, a) for k, a in enumerate(alts) if a not in ("", ".")]
        if not numbered:
            self.counts["skipped_no_alt"] += 1
            return []
        multi = len(numbered) > 1
        if multi and self.policy.multiallelic == "skip":
            self.counts["skipped_multiallelic"] += 1
            return []
        keep = [k for k, a in numbered if self.policy.non_snv == "keep" or _is_snv(ref, a)]
        if multi and self.policy.multiallelic == "collapse":
            # One site for the whole record, or none: a site where some ALT alleles were dropped
            # would call their carriers REF.
            if len(keep) < len(numbered):
                self.counts["skipped_non_snv"] += 1
                return []
            self.counts["collapsed_multiallelic"] += 1
            return [_ANY_ALT]
        if not keep:
            self.counts["skipped_non_snv"] += 1
            return []
        if multi:
            self.counts["split_multiallelic"] += 1
        return keep

    def _block(self, contigs, positions, ids, refs, alts, gt, info_af, idx, alt_no) -> SiteBlock:
        """The sites (record ``idx[i]``, ALT number ``alt_no[i]`` or ``_ANY_ALT``) as a block."""
        n_hap, n = gt.shape[1] * 2, len(idx)
        if not n:
            return SiteBlock([], np.zeros(0, np.int64), [], [], [], np.zeros((0, n_hap), np.uint8), None)
        every = n == len(gt) and bool((idx == np.arange(n)).all())
        calls = gt if every else gt[idx]
        biallelic = bool((alt_no == 1).all())
        if biallelic:
            # Biallelic sites (the common case): one comparison, on the calls as they are (a strided
            # view of the decoder's rows), then a free reshape of its contiguous result to 0/1 bytes.
            alleles = (calls == 1).reshape(n, n_hap).view(np.uint8)
        else:
            calls = calls.reshape(n, n_hap)
            k = alt_no[:, None]
            alleles = np.where(k == _ANY_ALT, calls > 0, calls == k).astype(np.uint8)
        missing = (calls == _MISSING).reshape(n, n_hap) if self.policy.missing == "mask" else None
        rows, alt_numbers = idx.tolist(), alt_no.tolist()
        af = None
        if info_af is not None and self.info_af:
            af = np.array(
                [_info_af_value(info_af[r], k) for r, k in zip(rows, alt_numbers, strict=True)], dtype=np.float32
            )
        self.counts["sites"] += n
        pick = list if every else (lambda col: list(map(col.__getitem__, rows)))
        if biallelic:
            labels = list(map(_FIRST, pick(alts)))
        else:
            labels = [_alt_label(alts[r], k) for r, k in zip(rows, alt_numbers, strict=True)]
        return SiteBlock(
            pick(contigs),
            np.asarray(positions, dtype=np.int64)[idx],
            pick(ids),
            pick(refs),
            labels,
            alleles,
            af,
            missing,
        )


def _where(contigs: Sequence[str], positions: Sequence[int], ids: Sequence[str], i: int) -> str:
    """Record ``i`` as error messages name it: ``contig:position``, and its ID when it has one."""
    return f"{contigs[i]}:{int(positions[i])}" + (f" ({ids[i]})" if ids[i] not in ("", ".") else "")


def _check_no_allele_named(alts: Sequence[str], calls: np.ndarray, where: str) -> None:
    """Refuse a call naming an ALT listed as "." (or empty) in a record that lists real ALTs too.

    Such a call has no allele to stand for: read as REF or as any ALT it would be wrong data. A
    record with no real ALT at all is skipped whatever its calls say (none of them is stored).
    """
    if "." not in alts and "" not in alts:
        return
    holes = [k + 1 for k, a in enumerate(alts) if a in ("", ".")]
    if len(holes) == len(alts):
        return
    named = calls[np.isin(calls, holes)]
    if named.size:
        raise InputError(
            f"record {where} has a call with allele {int(named[0])}, whose ALT is listed as "
            f"{alts[int(named[0]) - 1]!r}: its genotypes are malformed"
        )


def _is_snv(ref: str, alt: str) -> bool:
    return (ref, alt) in _SNV_PAIRS


# (REF, ALT) of a single-nucleotide variant, either case; ALT N is not a base.
_SNV_PAIRS = frozenset((r, a) for r in "ACGTNacgtn" for a in "ACGTacgt")
_FIRST = operator.itemgetter(0)


def _alt_label(alts: Sequence[str], alt_number: int) -> str:
    """The ALT column of a site: one ALT, or all of a collapsed record's ALTs joined with commas."""
    if alt_number == _ANY_ALT:
        return ",".join(a for a in alts if a not in ("", "."))
    return alts[alt_number - 1]


def _site_key(ref: str, alts: Sequence[str], alt_number: int) -> tuple[str, str]:
    """(REF, ALT) of a site, upper-cased: VCF alleles are case-insensitive."""
    return ref.upper(), _alt_label(alts, alt_number).upper()


def _info_af_value(values: Sequence[float] | float | None, alt_number: int) -> float:
    """INFO/AF of one site; a collapsed site's frequency is the sum over its ALT alleles."""
    if values is None:
        return float("nan")
    if isinstance(values, (int, float, np.number)):
        return float(values) if alt_number in (1, _ANY_ALT) else float("nan")
    if alt_number == _ANY_ALT:
        return float(np.sum(np.asarray(values, dtype=np.float64)))  # NaN if any ALT lacks a value
    return float(values[alt_number - 1]) if alt_number <= len(values) else float("nan")
