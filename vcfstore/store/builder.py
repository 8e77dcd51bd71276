"""Streaming, resumable construction of a panel store.

The builder pulls blocks of sites from a source into one buffer of 1 to 8 shards of
``chunk_sites`` sites (:func:`commit_chunks`: up to 8 MB of alleles), packs it into shards (columns
of inner chunks of ``haplotype_chunk`` haplotypes) and appends them; a background thread
compresses and writes one commit while the next is read. Peak memory is bounded by the chunk,
commit and block sizes, not by the panel's length (:func:`build_memory_bound`): per haplotype,
1.5 bytes per pending site (the pending sites as uint8, the packed shards being written and
Zarr's copy of them, the next ones being packed) plus, per site of a source's block, 3 bytes from
a tree sequence (tskit decodes straight to uint8) or 16 from VCF, VCF Zarr or arrays (a VCF's
raw int32 GT codes in two buffers, one read while the other is decoded, or int16 genotypes with
a phase column, and the input filter's temporaries); plus 64 MB of codec, reader and tree
buffers. At 1,000,000 haplotypes, 2048-site shards and 256-site blocks from a tree sequence,
that is 3.9 GB (the tree sequence itself comes on top).

Resuming: after every commit the number of committed sites is written to the group's attributes
(zarr writes attribute files atomically). A build that is killed and run again with the same
input and parameters truncates the arrays to the committed sites, skips that many sites of the
input and continues; the result equals an uninterrupted build. A store is marked complete only
at the very end, so a half-written store is never opened as a valid one.

A file-system error (disk full, read-only file system, permission denied) ends the build with
a one-line :class:`StoreError` naming the path and the cause; the committed sites stay, so the
same command resumes once the cause is fixed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vcfstore._lock import WriterLock
from vcfstore._version import __version__
from vcfstore.errors import ArgumentError, InputError, InputWarning, StoreError
from vcfstore.sources import ArraySource, SiteBlock, SiteSource
from vcfstore.store.af_table import choose_af
from vcfstore.store.annotations import SampleAnnotations, group_frequencies
from vcfstore.store.format import ATTR_KEY, PROGRESS_KEY, SITE_COLUMNS, STORE_FORMAT_VERSION
from vcfstore.store.packed import pack_sites
from vcfstore.store.reader import PanelStore, plain_strings, read_store_attrs
from vcfstore.store.vocab import Vocabulary
from vcfstore.store.windows import check_window_size, check_windows, fixed_windows

DEFAULT_CHUNK_SITES = 2048
DEFAULT_HAPLOTYPE_CHUNK = 1024
DEFAULT_BLOCK_SITES = 1024
# Zstd 10 of the allele chunks: on the msprime and 1000 Genomes panels of benchmarks.storage_layout,
# level 15 makes them 7-12% smaller for 6-10x the compression time (on chr20 about half the time
# of reading the VCF); levels 11-13 save 2-4% for 1-6.5x (README, "Chunking and codecs, measured").
DEFAULT_ZSTD_LEVEL = 10
# Zstd in Zarr's encoding threads (their malloc arenas), htslib and tskit's tree arrays:
# measured 10-46 MB whatever the panel's size.
_FIXED_BUFFERS = 64 << 20
_PER_CHUNK_SITE = 1.5  # bytes per haplotype and pending site: the site, the packed shard and its copy
_PER_BLOCK_SITE = {"tree-sequence": 3, "vcf": 16}  # bytes per haplotype and site of a source's block
# A commit takes whole shards up to this many bytes of pending alleles: a small panel's build then
# makes a few large writes instead of many small ones (each write of the seven arrays and the
# progress record costs about 30 ms of Zarr's Python, which holds the GIL the decoder needs).
COMMIT_BYTES = 8 << 20


class _ZarrSetting:
    """Zarr configuration values held while any user in this process needs them.

    Zarr's configuration is process-wide: builds running in threads of one process share it, and
    the last one to finish restores it (nested ``zarr.config.set`` contexts left in another order
    would leave it changed). Other Zarr work in the process sees the values meanwhile.
    """

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values
        self._lock = threading.Lock()
        self._users = 0
        self._context: contextlib.AbstractContextManager[Any] | None = None

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        import zarr

        with self._lock:
            if self._users == 0:
                self._context = zarr.config.set(self._values)
                self._context.__enter__()
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0 and self._context is not None:
                    self._context.__exit__(None, None, None)
                    self._context = None


# Every chunk is written, empty ones too, so a chunk missing from disk is always damage (never "all REF").
_EVERY_CHUNK = _ZarrSetting({"array.write_empty_chunks": True})
# One compression at a time while a build reads its input (see _Writer.run).
_SERIAL_COMPRESSION = _ZarrSetting({"async.concurrency": 1})


def build_store(
    source: SiteSource,
    out: str | os.PathLike[str],
    *,
    window_size: int | None = None,
    overlap: int = 0,
    windows: np.ndarray | None = None,
    allow_overlap: bool = False,
    max_seq_len: int = 1030,
    af_from: str | os.PathLike[str] | np.ndarray = "panel",
    vocab: Vocabulary | None = None,
    annotations: str | os.PathLike[str] | SampleAnnotations | None = None,
    chunk_sites: int = DEFAULT_CHUNK_SITES,
    haplotype_chunk: int = DEFAULT_HAPLOTYPE_CHUNK,
    zstd_level: int = DEFAULT_ZSTD_LEVEL,
    block_sites: int = DEFAULT_BLOCK_SITES,
    force: bool = False,
    progress: bool = True,
    storage_options: dict[str, Any] | None = None,
    staging: str | os.PathLike[str] | None = None,
) -> PanelStore:
    """Build (or resume building) a panel store from a site source.

    Parameters
    ----------
    source : VcfSource, VcfZarrSource or ArraySource
        Where the sites come from.
    out : path or URL
        The store directory. An unfinished build there with the same input and parameters is
        resumed; a finished store or a foreign directory is left alone unless ``force``
        (which only ever removes a vcfstore store). A URL (``s3://bucket/panel.vcfstore``) is
        built in a local ``staging`` directory and uploaded when finished (see
        :class:`~vcfstore.store.remote.RemoteBuild`; ``storage_options`` as for :func:`open_store`).
    window_size, overlap : int
        Fixed windows of ``window_size`` sites (default ``max_seq_len - 2``) overlapping by
        ``overlap`` sites, restarted at every contig.
    windows : array [n_windows, 2], optional
        Explicit half-open site ranges instead (e.g. from :func:`read_windows_csv`); not
        together with ``window_size`` or ``overlap``. Sites outside every window give an
        :class:`InputWarning`, and so does an input with records that did not become sites
        (a windows table made for VCF-Bert indexes records; see ``InputPolicy.multiallelic``).
    allow_overlap : bool
        Accept explicit windows that share sites.
    max_seq_len : int
        Token length of a window: ``[SOS] sites [EOS] pad``; windows hold at most this minus 2.
    af_from : "panel", "info", array [n_sites] or path
        Allele frequency computed from the panel, read from the input's INFO/AF, or supplied:
        as an array or ``.npy`` file of one value per kept site, or as a TSV/CSV table by
        (contig, position, REF, ALT) that must cover every kept site (see
        :mod:`vcfstore.store.af_table`).
    annotations : path or SampleAnnotations, optional
        A 1000 Genomes ``.panel`` file (``sample pop super_pop gender``): stored with the
        samples, and a per-super-population frequency table (hom-ref, het, hom-alt, AF) is
        computed while building (see :mod:`vcfstore.store.annotations`).
    chunk_sites : int
        Sites per shard (a multiple of 8, so shards are byte-aligned after bit packing); a
        window of up to ``chunk_sites / 2 + 4`` sites touches at most two shards.
    haplotype_chunk : int
        Haplotypes per inner chunk of a shard: a read of some haplotypes decodes only their
        inner chunks (at most ``haplotype_chunk * chunk_sites / 8`` bytes each), and taller
        chunks compress better (similar haplotypes compress together); a panel of up to twice
        this many haplotypes keeps one inner chunk per shard (:func:`inner_chunk_rows`). The
        README has the measured trade-off.
    zstd_level : int
        Zstd level of the allele chunks.
    block_sites : int
        Sites the source decodes at once (peak memory grows with it; see the module docstring).
    force : bool
        Replace an existing store at ``out``.

    Returns
    -------
    PanelStore
        The finished store, opened read-only.

    Raises
    ------
    InputError
        The input or the windows cannot be used (the unfinished store is removed).
    StoreError
        ``out`` holds something else, or the file system failed (the build resumes when rerun).
    """
    vocab = vocab or Vocabulary()
    if source.policy.missing == "mask":
        raise ArgumentError(
            "missing='mask' is for imputation targets (vcfstore.store.align); a panel store holds complete "
            "haplotypes: choose error, skip-site or ref"
        )
    if chunk_sites < 8 or chunk_sites % 8:
        raise InputError(f"chunk_sites must be a positive multiple of 8, not {chunk_sites}")
    for name, value in (("haplotype_chunk", haplotype_chunk), ("block_sites", block_sites)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ArgumentError(f"{name} must be a positive integer, not {value!r}")
    max_sites = max_seq_len - 2
    if windows is None:
        window_size = max_sites if window_size is None else window_size
        check_window_size(window_size, overlap)
        if window_size > max_sites:
            raise InputError(
                f"window size {window_size} does not fit max_seq_len={max_seq_len} "
                f"(at most {max_sites} sites plus SOS and EOS)"
            )
    else:
        if window_size is not None or overlap:
            raise ArgumentError(
                "windows come from a table or from window_size/overlap, not both (--windows with --window-size "
                "or --overlap); use allow_overlap (--allow-overlap) for a table whose windows share sites"
            )
        windows = check_windows(windows, max_sites, allow_overlap=allow_overlap)
    af = choose_af(af_from)
    if annotations is not None and not isinstance(annotations, SampleAnnotations):
        annotations = SampleAnnotations.from_panel_file(annotations, source.samples)
    described = source.describe()
    params = {
        "max_seq_len": max_seq_len,
        "window_size": window_size,
        "overlap": overlap,
        "windows_sha256": None if windows is None else hashlib.sha256(windows.tobytes()).hexdigest(),
        "af_from": af.label,
        "af_sha256": af.digest(),
        "policy": source.policy.to_dict(),
        "chunk_sites": chunk_sites,
        "haplotype_chunk": haplotype_chunk,
        "zstd_level": zstd_level,
        "vocab": vocab.to_dict(),
    }
    if annotations is not None:  # only then, so stores built without keep their identity
        params["annotations_sha256"] = annotations.digest()
    from vcfstore.store.remote import RemoteBuild, is_url

    remote = RemoteBuild(os.fspath(out), storage_options, staging, force=force) if is_url(out) else None
    if remote is not None and remote.staged_identity() == _identity(described, params):
        return remote.publish()  # built before, but the upload failed: upload it again
    out = remote.staging if remote is not None else Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        # One writer at a time: a lock file beside the store (zarr's mode="w" clears the directory).
        lock = WriterLock(out.parent / f".{out.name}.lock", f"building from {described['name']}", StoreError)
        with lock, _EVERY_CHUNK.held():
            expected = source.expected_records()  # (an index read: once, for the arrays' room and the progress bar)
            writer = _Writer.open(out, source, described, params, force, annotations, expected)
            source.filter.info_af = af.label == "info"  # else the input's INFO/AF need not even be read
            try:
                report = writer.run(source, block_sites, progress, expected)
                supplied_af = af.values
                if af.table is not None:
                    supplied_af = af.table.for_sites(writer.site_columns(), writer.runs)
                if supplied_af is not None and len(supplied_af) != writer.sites:
                    raise InputError(
                        f"the supplied allele frequencies have {len(supplied_af)} entries; "
                        f"the panel kept {writer.sites} sites"
                    )
                if windows is None:
                    assert window_size is not None
                    windows = fixed_windows(writer.runs, window_size, overlap)
                else:
                    windows = check_windows(windows, max_sites, writer.runs, allow_overlap=allow_overlap)
                    _warn_records_not_sites(report, writer.sites)
            except InputError:
                # The same input would fail at the same place again, so the unfinished store could
                # never be resumed: remove it (it is ours and was never marked complete).
                shutil.rmtree(out, ignore_errors=True)
                raise
            writer.finish(windows, supplied_af, report)
    except OSError as e:
        raise StoreError(
            f"{out}: the build stopped: {e.strerror or e} ({e.filename or out}); "
            "fix the cause and run the same command again to resume"
        ) from None
    return remote.publish() if remote is not None else PanelStore(out)


def _warn_records_not_sites(counts: Counter[str], n_sites: int) -> None:
    """Warn when explicit windows index sites that are not the input's records one to one."""
    if counts["records"] != n_sites:
        skipped = {k: v for k, v in sorted(counts.items()) if k.startswith(("skipped_", "split_")) and v}
        warnings.warn(
            f"the input's {counts['records']} records became {n_sites} sites ({skipped}); a windows table "
            "made for VCF-Bert indexes records and would not line up (--multiallelic collapse --non-snv keep "
            "makes one site per record)",
            InputWarning,
            stacklevel=3,
        )


class _Writer:
    """Appends chunk columns to the Zarr group and records progress after each one."""

    def __init__(
        self,
        out: Path,
        root: Any,
        meta: dict[str, Any],
        state: dict[str, Any],
        annotations: SampleAnnotations | None,
    ) -> None:
        self.out, self.root, self.meta, self.annotations = out, root, meta, annotations
        self.sites: int = state["sites"]
        self.runs: list[tuple[str, int, int]] = [(str(c), int(a), int(b)) for c, a, b in state["runs"]]
        self.counts: Counter[str] = Counter(state["counts"])
        self.chunk_sites: int = meta["params"]["chunk_sites"]
        self.resumed_from: int | None = self.sites or None
        self.capacity = self.sites  # sites the arrays have room for (more than written while building)

    @classmethod
    def open(
        cls,
        out: Path,
        source: SiteSource,
        described: dict,
        params: dict,
        force: bool,
        annotations: SampleAnnotations | None,
        expected_records: int | None,
    ) -> _Writer:
        import zarr

        identity = _identity(described, params)
        existing = _existing(out)
        if existing is not None:
            meta, state = existing
            resumable = state is not None and not meta.get("complete") and meta.get("identity") == identity
            if resumable and not force and state is not None:
                root = zarr.open_group(str(out), mode="r+")
                writer = cls(out, root, meta, state, annotations)
                writer._truncate()
                return writer
            if not force:
                what = (
                    "a finished store"
                    if meta.get("complete")
                    else "an unfinished build with another input or parameters"
                )
                raise StoreError(f"{out} holds {what}; pass force=True (--force) to replace it")
            shutil.rmtree(out)
        elif out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise StoreError(f"{out} exists and is not a vcfstore store; refusing to write into it")
        created = not out.exists()
        try:
            return cls._create(out, source, described, params, identity, annotations, expected_records)
        except OSError:
            # Stopped before the progress record existed: nothing here can be resumed, and a
            # leftover group would make the rerun refuse the directory as foreign.
            if created:
                shutil.rmtree(out, ignore_errors=True)
            else:
                for child in out.iterdir():
                    if child.is_dir():
                        shutil.rmtree(child, ignore_errors=True)
                    else:
                        child.unlink(missing_ok=True)
            raise

    @classmethod
    def _create(
        cls,
        out: Path,
        source: SiteSource,
        described: dict,
        params: dict,
        identity: str,
        annotations: SampleAnnotations | None,
        expected_records: int | None,
    ) -> _Writer:
        import zarr
        from zarr.codecs import ZstdCodec

        n_hap = 2 * len(source.samples)
        # Room for the sites the input's index announces, made with the arrays (each resize while
        # building rewrites every array's metadata); the room left over goes at the end.
        room = -(-(expected_records or 0) // params["chunk_sites"]) * params["chunk_sites"]
        root = zarr.open_group(str(out), mode="w")
        zstd = [ZstdCodec(level=params["zstd_level"])]
        light = [ZstdCodec(level=3)]  # per-site columns are small; a high level only slows appends
        # Site columns are chunked like the allele chunks, so each commit writes whole new chunks
        # instead of re-encoding a partly filled one.
        site_chunk = (params["chunk_sites"],)
        # One shard per chunk_sites sites holding every haplotype (so each commit writes whole
        # shards, never re-encoding one), split into inner chunks of haplotype_chunk haplotypes.
        inner = inner_chunk_rows(n_hap, params["haplotype_chunk"])
        root.create_array(
            "alleles",
            shape=(n_hap, room // 8),
            dtype="uint8",
            compressors=zstd,
            chunks=(inner, params["chunk_sites"] // 8),
            shards=(-(-n_hap // inner) * inner, params["chunk_sites"] // 8),
            fill_value=0,
        )
        sites = root.require_group("sites")
        for name, dtype in (("position", "int64"), ("contig", "int16"), ("af", "float32")):
            sites.create_array(name, shape=(room,), dtype=dtype, chunks=site_chunk, compressors=light)
        for name in ("id", "ref", "alt"):
            sites.create_array(name, shape=(room,), dtype=str, chunks=site_chunk, compressors=light)
        samples = root.create_array("samples", shape=(len(source.samples),), dtype=str, compressors=light)
        samples[:] = np.asarray(source.samples, dtype=str)
        if annotations is not None:
            for name in ("pop", "super_pop", "gender"):
                arr = root.create_array(f"samples_{name}", shape=(len(source.samples),), dtype=str, compressors=light)
                arr[:] = getattr(annotations, name)
            groups = annotations.groups
            root.create_array(
                "frequencies",
                shape=(4, len(groups), room),
                dtype="float32",
                chunks=(4, len(groups), params["chunk_sites"]),
                compressors=light,
            )
        meta = {
            "format_version": STORE_FORMAT_VERSION,
            "complete": False,
            "identity": identity,
            "created_with": f"vcfstore {__version__}",
            "n_haplotypes": n_hap,
            "max_seq_len": params["max_seq_len"],
            "vocab": params["vocab"],
            "params": params,
            "input": described,
        }
        if annotations is not None:
            meta["annotations"] = {"source": annotations.source, "groups": annotations.groups}
        state: dict[str, Any] = {"sites": 0, "runs": [], "counts": {}}
        root.attrs.update({ATTR_KEY: meta, PROGRESS_KEY: state})
        writer = cls(out, root, meta, state, annotations)
        writer.capacity = room
        return writer

    def _truncate(self) -> None:
        """Cut every array back to the committed sites (a killed build may have written more)."""
        self._resize(self.sites)

    def _resize(self, n_sites: int) -> None:
        """Give every site-indexed array room for ``n_sites`` sites (chunks beyond are deleted)."""
        alleles = self.root["alleles"]
        alleles.resize((alleles.shape[0], (n_sites + 7) // 8))
        for name in SITE_COLUMNS:
            self.root[f"sites/{name}"].resize((n_sites,))
        if "frequencies" in self.root:
            freq = self.root["frequencies"]
            freq.resize((*freq.shape[:2], n_sites))
        self.capacity = n_sites

    def _reserve(self, n_sites: int) -> None:
        """Room for ``n_sites`` sites, grown geometrically: each resize rewrites every array's metadata."""
        if n_sites > self.capacity:
            grown = max(n_sites, 2 * self.capacity)
            self._resize(-(-grown // self.chunk_sites) * self.chunk_sites)

    def run(self, source: SiteSource, block_sites: int, progress: bool, expected_records: int | None) -> Counter[str]:
        """Stream the source into the store, skipping sites already committed."""
        from tqdm.auto import tqdm

        skip = self.sites
        n_hap = self.meta["n_haplotypes"]
        pending = _Pending(self.chunk_sites * commit_chunks(n_hap, self.chunk_sites), n_hap)
        bar = tqdm(
            total=expected_records,
            unit=" records",
            disable=not progress,
            desc=f"building {self.out.name}",
            smoothing=0.1,
            dynamic_ncols=True,
        )
        seen = 0
        # Compressing and writing a shard (Zstd 15) overlaps reading the next one: the pending
        # sites are packed here (so their buffer refills at once) and written in the background.
        # While the input is read, Zarr compresses one chunk at a time: its parallel compression
        # would take the reader's core (measured: slower, and more CPU time in all); the last
        # commits, after the input is read, compress in parallel.
        commits = _OneAhead(self._commit)
        reading = contextlib.ExitStack()
        reading.enter_context(_SERIAL_COMPRESSION.held())
        try:
            for block in source.blocks(block_sites):
                bar.update(source.filter.counts["records"] - seen)
                seen = source.filter.counts["records"]
                if skip:
                    take = min(skip, len(block))
                    block, skip = block.slice(take), skip - take
                while len(block):
                    block = block.slice(pending.add(block))
                    if pending.full:
                        commits.submit(self._prepare(pending.block()), dict(source.filter.counts))
                        pending.clear()
                del block  # before the source decodes the next one: one block in memory, not two
            reading.close()
            bar.close()
            if len(pending):
                commits.submit(self._prepare(pending.block()), dict(source.filter.counts))
        finally:
            reading.close()
            commits.close()
        if self.sites == 0:
            raise InputError(f"{self.meta['input']['name']}: no site passed the input policy; nothing to store")
        return source.filter.counts

    def _prepare(self, block: SiteBlock) -> _Column:
        """What one commit writes, computed from the pending sites, which may be overwritten afterwards."""
        packed = pack_sites(block.alleles)  # [haplotypes, sites / 8]
        # exact integer counts divided once: the same values as a float64 mean, at half the cost
        af = (block.alleles.sum(axis=1, dtype=np.uint32) / block.alleles.shape[1]).astype(np.float32)
        if self.meta["params"]["af_from"] == "info":
            if block.info_af is None or np.isnan(block.info_af).any():
                i = 0 if block.info_af is None else int(np.flatnonzero(np.isnan(block.info_af))[0])
                raise InputError(
                    f"site {block.contigs[i]}:{block.positions[i]} has no INFO/AF value; use --af-from panel"
                )
            af = block.info_af.astype(np.float32)
            bad = np.flatnonzero((af < 0) | (af > 1))  # infinities included
            if bad.size:
                i = int(bad[0])
                where = f"{block.contigs[i]}:{block.positions[i]}"
                raise InputError(f"site {where} has INFO/AF {float(af[i]):g}, outside [0, 1]")
        columns = {
            "position": block.positions,
            "af": af,
            # object arrays: Zarr encodes the strings as they are (no fixed-width copy first)
            "id": np.array(block.ids, dtype=object),
            "ref": np.array(block.refs, dtype=object),
            "alt": np.array(block.alts, dtype=object),
        }
        freq = None if self.annotations is None else group_frequencies(block.alleles, self.annotations)
        return _Column(list(block.contigs), packed, columns, freq)

    def _commit(self, column: _Column, counts: dict[str, int]) -> None:
        """Append one shard's sites, then record the progress (``counts``: the input's counts so far)."""
        n, start = len(column.contigs), self.sites
        if start % 8:
            raise StoreError("internal error: a chunk was appended after a partial chunk")
        self._extend_runs(column.contigs, start)
        run_of = {name: i for i, (name, _, _) in enumerate(self.runs)}
        contig_idx = np.asarray([run_of[c] for c in column.contigs], dtype=np.int16)
        self._reserve(start + n)
        self.root["alleles"][:, start // 8 : start // 8 + column.packed.shape[1]] = column.packed
        for name, values in {**column.columns, "contig": contig_idx}.items():
            self.root[f"sites/{name}"][start : start + n] = values
        if column.frequencies is not None:
            self.root["frequencies"][:, :, start : start + n] = column.frequencies
        self.sites = start + n
        self.root.attrs[PROGRESS_KEY] = {"sites": self.sites, "runs": self.runs, "counts": counts}

    def _extend_runs(self, contigs: list[str], start: int) -> None:
        for i, c in enumerate(contigs):
            if self.runs and self.runs[-1][0] == c:
                continue
            if self.runs:
                self.runs[-1] = (self.runs[-1][0], self.runs[-1][1], start + i)
            self.runs.append((c, start + i, start + i))
        name, first, _ = self.runs[-1]
        self.runs[-1] = (name, first, start + len(contigs))

    def site_columns(self) -> dict[str, np.ndarray]:
        """The written sites' contig names, positions, REF and ALT (for matching an AF table)."""
        names = np.asarray([name for name, _, _ in self.runs] or [""])
        alleles = {c: plain_strings(self.root[f"sites/{c}"][: self.sites]) for c in ("ref", "alt")}
        contigs = names[np.asarray(self.root["sites/contig"][: self.sites])]
        return {"contig": contigs, "position": np.asarray(self.root["sites/position"][: self.sites]), **alleles}

    def finish(self, windows: np.ndarray, supplied_af: np.ndarray | None, counts: Counter[str]) -> None:
        """Write the windows and mark the store complete (the last write of a build)."""
        from zarr.codecs import ZstdCodec

        from vcfstore.store.integrity import record_checksums

        self._resize(self.sites)  # the room grown while building goes
        if supplied_af is not None:
            self.root["sites/af"][:] = supplied_af
        if "windows" in self.root:
            del self.root["windows"]
        arr = self.root.create_array(
            "windows",
            shape=windows.shape,
            dtype="int64",
            chunks=windows.shape,
            compressors=[ZstdCodec(level=3)],
        )
        arr[:] = windows
        record_checksums(self.out)  # every file as written; the reader checks each read against it
        meta = dict(self.meta)
        meta.update(
            complete=True,
            n_sites=self.sites,
            n_windows=len(windows),
            contig_runs=self.runs,
            counts=dict(counts),
            resumed_from_site=self.resumed_from,
            finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
        # One write marks the store complete and drops the progress record (a kill between two
        # writes would leave a finished store that a rerun refuses to touch).
        self.root.attrs.put({ATTR_KEY: meta})


class _OneAhead:
    """Runs a function in one background thread, one call at a time, in order.

    ``submit`` first waits for the call before it, so at most one call is in flight (memory
    holds one more chunk column) and an error surfaces at the next ``submit`` or at ``close``.
    """

    def __init__(self, fn: Callable[..., None]) -> None:
        self._fn = fn
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="vcfstore-commit")
        self._last: Future[None] | None = None

    def submit(self, *args: Any) -> None:
        self.wait()
        self._last = self._pool.submit(self._fn, *args)

    def wait(self) -> None:
        last, self._last = self._last, None
        if last is not None:
            last.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)


def _identity(described: dict[str, Any], params: dict[str, Any]) -> str:
    """The digest of a build's input and parameters: equal digests build equal stores."""
    return hashlib.sha256(
        json.dumps([STORE_FORMAT_VERSION, described["sha256"], params], sort_keys=True).encode()
    ).hexdigest()[:32]


def _existing(out: Path) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
    """(store attributes, build progress or None) of a vcfstore group at ``out``, else None."""
    attrs = read_store_attrs(out)
    if attrs is None:
        return None
    state = attrs.get(PROGRESS_KEY)
    return dict(attrs[ATTR_KEY]), (dict(state) if isinstance(state, dict) else None)


@dataclass(frozen=True)
class _Column:
    """One shard's sites ready to write: packed alleles, site columns (but the contig index), group frequencies."""

    contigs: list[str]
    packed: np.ndarray
    columns: dict[str, np.ndarray]
    frequencies: np.ndarray | None


class _Pending:
    """The sites of the next shard, gathered from the source's blocks into one preallocated buffer."""

    def __init__(self, n_sites: int, n_haplotypes: int) -> None:
        self.alleles = np.empty((n_sites, n_haplotypes), dtype=np.uint8)
        self.clear()

    def clear(self) -> None:
        self.n = 0
        self.contigs: list[str] = []
        self.positions: list[np.ndarray] = []
        self.ids: list[str] = []
        self.refs: list[str] = []
        self.alts: list[str] = []
        self.info_af: list[np.ndarray] | None = []

    def __len__(self) -> int:
        return self.n

    @property
    def full(self) -> bool:
        return self.n == len(self.alleles)

    def add(self, block: SiteBlock) -> int:
        """Take as many of ``block``'s sites as fit; returns how many."""
        take = min(len(block), len(self.alleles) - self.n)
        part = block.slice(0, take)
        self.alleles[self.n : self.n + take] = part.alleles
        self.contigs += part.contigs
        self.positions.append(part.positions)
        self.ids += part.ids
        self.refs += part.refs
        self.alts += part.alts
        if self.info_af is not None:
            self.info_af = None if part.info_af is None else [*self.info_af, part.info_af]
        self.n += take
        return take

    def block(self) -> SiteBlock:
        """The pending sites as one block (its alleles a view of the buffer)."""
        return SiteBlock(
            self.contigs,
            np.concatenate(self.positions),
            self.ids,
            self.refs,
            self.alts,
            self.alleles[: self.n],
            None if self.info_af is None else np.concatenate(self.info_af),
        )


def inner_chunk_rows(n_haplotypes: int, haplotype_chunk: int) -> int:
    """Haplotypes per inner chunk: ``haplotype_chunk``, or all of a panel of at most twice that.

    Decoding a whole shard of a small panel costs little (2,048 haplotypes x 2,048 sites is
    512 KB), while splitting it would cost compression.
    """
    return n_haplotypes if n_haplotypes <= 2 * haplotype_chunk else haplotype_chunk


def build_memory_bound(
    n_haplotypes: int,
    *,
    chunk_sites: int = DEFAULT_CHUNK_SITES,
    block_sites: int = DEFAULT_BLOCK_SITES,
    source: Literal["vcf", "tree-sequence"] = "vcf",
) -> int:
    """The most anonymous memory a build adds to its process, in bytes (see the module docstring).

    ``source="tree-sequence"`` for :class:`~vcfstore.sources.TreeSequenceSource` (the tree
    sequence itself comes on top), ``"vcf"`` for VCF, VCF Zarr and array sources (an
    :class:`~vcfstore.sources.ArraySource` also holds its arrays). Measured from outside in
    ``tests/test_scale.py``, ``tests/test_build_process.py`` and ``benchmarks/scale.py``.
    """
    pending = n_haplotypes * chunk_sites * commit_chunks(n_haplotypes, chunk_sites)
    return int(_PER_CHUNK_SITE * pending + n_haplotypes * _PER_BLOCK_SITE[source] * block_sites) + _FIXED_BUFFERS


def commit_chunks(n_haplotypes: int, chunk_sites: int) -> int:
    """Shards per commit: as many as :data:`COMMIT_BYTES` of pending alleles hold, from 1 to 8.

    At most 8, so a build of small chunks still commits (and can resume) every few thousand sites.
    """
    return min(8, max(1, COMMIT_BYTES // max(1, n_haplotypes * chunk_sites)))


def build_from_arrays(
    alleles: np.ndarray, positions: np.ndarray, out: str | os.PathLike[str], **kwargs: Any
) -> PanelStore:
    """Build a store from in-memory arrays (see :class:`ArraySource` and :func:`build_store`).

    Keyword arguments ``contigs``, ``samples``, ``ids``, ``refs`` and ``alts`` go to the source,
    the rest to :func:`build_store`; ``af`` is a shorthand for ``af_from=array``.
    """
    source_keys = ("contigs", "samples", "ids", "refs", "alts")
    source = ArraySource(alleles, positions, **{k: kwargs.pop(k) for k in source_keys if k in kwargs})
    if "af" in kwargs:
        kwargs["af_from"] = kwargs.pop("af")
    kwargs.setdefault("progress", False)
    return build_store(source, out, **kwargs)
