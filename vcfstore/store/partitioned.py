"""Partitioned builds: a store built from N parts of its input, in parallel, equal to a serial build.

Modelled on bio2zarr's ``dexplode``/``dencode``, in three steps that can run on one machine
(:func:`build_store_parallel`, ``vcfstore build --workers N``) or as a cluster job array
(``vcfstore partition init|run|finalise``):

1. :func:`plan_partitions` splits the input and writes ``plan.json`` into a work directory
   (by default ``.<name>.partitions`` beside the store). A VCF/BCF needs its .tbi/.csi index:
   the parts are position ranges of contigs, cut where the index has file offsets (bio2zarr's
   partitioner), and a record belongs to the part holding its POS (a region query also returns
   records that only overlap the region; those are left to the part before), so no position is
   in two parts. A VCF Zarr store is cut into variant-index ranges at its variant chunks, each cut
   moved past the records that share the position before it.
2. :func:`build_partition` reads one part through the same :class:`InputPolicy` (so each part
   counts and skips exactly what a serial read of those records would) and writes its sites as
   intermediate files (bit-packed alleles and site columns, Zstd level 1). Rerunning a finished part does nothing;
   a part whose process was killed is redone (a part becomes visible only by a rename once whole).
3. :func:`finalise_partitions` feeds the parts' sites, in order, to :func:`build_store` through a
   source that concatenates them and sums their counts, so the store is written by the same code
   from the same sites: every array chunk, ``checksums.json`` and the root attributes equal those
   of a serial build, except ``finished`` (the time stamp) and, when the finalise step itself was
   interrupted and resumed, ``resumed_from_site``. The work directory is removed afterwards.

Where the time goes: the parts run the reading, parsing and filtering (most of a build's time on
panels up to thousands of haplotypes); the finalise step compresses every chunk once (Zstd level
15, overlapped with reading the parts), so it is the serial remainder (``benchmarks/partitioned.py``).
"""

from __future__ import annotations

import hashlib
import inspect
import io
import itertools
import json
import multiprocessing
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

from vcfstore._fileio import atomic_write_bytes, file_sha256, fsync_dir, is_url, temp_path
from vcfstore.errors import ArgumentError, InputError, InputWarning, StoreError
from vcfstore.sources import InputPolicy, RecordFilter, SiteBlock, VcfSource, VcfZarrSource
from vcfstore.store.builder import build_store
from vcfstore.store.format import ATTR_KEY
from vcfstore.store.reader import PanelStore, read_store_attrs
from vcfstore.store.vocab import Vocabulary

PLAN_VERSION = 1
PLAN = "plan.json"
DONE = "done.json"
# Sites are written in batches of about this many bytes of unpacked alleles (memory per worker).
BATCH_BYTES = 16 << 20
# build_store's parameters that shape the store, recorded in the plan; the rest are per run.
BUILD_KEYS = (
    "window_size",
    "overlap",
    "windows",
    "allow_overlap",
    "max_seq_len",
    "af_from",
    "vocab",
    "annotations",
    "chunk_sites",
    "haplotype_chunk",
    "zstd_level",
    "block_sites",
)
_ARRAYS = ("windows", "af_from")  # build parameters that may be arrays: kept as .npy files beside the plan


def default_work_dir(out: str | os.PathLike[str]) -> Path:
    """Where the plan and the parts go unless told: ``.<name>.partitions`` beside a local store.

    For a store URL, a directory under the system's temporary directory, fixed per URL; a
    cluster build to object storage passes a ``work_dir`` on a shared file system instead.
    """
    text = os.fspath(out)
    if is_url(text):
        digest = hashlib.sha256(text.rstrip("/").encode()).hexdigest()[:16]
        name = text.rstrip("/").rsplit("/", 1)[-1]
        return Path(tempfile.gettempdir()) / "vcfstore-partitions" / f"{digest}-{name}"
    out = Path(text)
    return out.parent / f".{out.name}.partitions"


def plan_partitions(
    source_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    partitions: int,
    policy: InputPolicy | None = None,
    af_field: str = "AF",
    work_dir: str | os.PathLike[str] | None = None,
    force: bool = False,
    **build_kwargs: Any,
) -> dict[str, Any]:
    """Split an input into parts and write the plan of a partitioned build (step 1 of 3).

    Parameters
    ----------
    source_path : path
        An indexed VCF/BCF file (.tbi or .csi beside it) or a VCF Zarr directory.
    out : path or URL
        The store the build makes (as for :func:`build_store`).
    partitions : int
        How many parts to aim for; a VCF gives fewer when its index has fewer places to cut.
    policy, af_field
        As for :class:`~vcfstore.sources.VcfSource`.
    work_dir : path, optional
        Where the plan and the parts go (default :func:`default_work_dir`); on a cluster, a
        directory every job can reach.
    force : bool
        Replace a plan made with other arguments (and, at the end, a finished store at ``out``).
    **build_kwargs
        :func:`build_store`'s parameters that shape the store (:data:`BUILD_KEYS`); ``annotations``
        as the path of the .panel file.

    Returns
    -------
    dict
        The plan (also in ``<work_dir>/plan.json``). A plan with the same arguments already there is
        kept, with its finished parts.

    Raises
    ------
    InputError
        A VCF without an index, or an input that cannot be read.
    StoreError
        ``out`` holds a finished store, or the work directory a plan for other arguments (without ``force``).
    """
    if partitions < 1:
        raise ArgumentError(f"partitions must be at least 1, not {partitions}")
    policy = policy or InputPolicy()
    if policy.missing == "mask":
        raise ArgumentError("missing='mask' is for imputation targets; a panel store holds complete haplotypes")
    work = Path(work_dir) if work_dir is not None else default_work_dir(out)
    if not force and not is_url(out):
        attrs = read_store_attrs(Path(out)) if Path(out).is_dir() else None
        if attrs is not None and attrs[ATTR_KEY].get("complete"):
            raise StoreError(f"{out} holds a finished store; pass force=True (--force) to replace it")
    path = Path(source_path).resolve()
    build, arrays = _normalise(build_kwargs)
    if path.is_dir():
        source: VcfSource | VcfZarrSource = VcfZarrSource(path, policy=policy)
        parts = _zarr_partitions(path, partitions)
        kind = "vcf-zarr"
    else:
        parts = _vcf_partitions(path, partitions)  # first: refuses a file without an index before hashing it
        source = VcfSource(path, policy=policy, af_field=af_field)
        kind = "vcf"
    plan: dict[str, Any] = {
        "version": PLAN_VERSION,
        "input": {
            "path": str(path),
            "kind": kind,
            "af_field": af_field,
            "fingerprint": _fingerprint(path),
            "described": source.describe(),
            "samples": list(source.samples),
            "expected_records": source.expected_records(),
        },
        "policy": policy.to_dict(),
        "build": build,
        "partitions": parts,
    }
    plan["digest"] = _digest(plan)
    old = _read_plan(work) if (work / PLAN).is_file() else None
    if old is not None and old["digest"] == plan["digest"]:
        return old
    if (old is not None or (work.is_dir() and any(work.iterdir()))) and not force:
        raise StoreError(
            f"{work} holds a partition plan made with other arguments or another version of the input; "
            "pass force=True (--force) to replace it"
        )
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for name, data in arrays.items():
        atomic_write_bytes(work / f"{name}.npy", data)
    atomic_write_bytes(work / PLAN, json.dumps(plan, indent=1).encode())
    return plan


def build_partition(
    out: str | os.PathLike[str], index: int, *, work_dir: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """Read part ``index`` of a planned build and write its sites (step 2 of 3; idempotent).

    Returns
    -------
    dict
        The part's record: ``sites``, ``records``, ``counts`` (the input policy's), ``bytes``
        written, ``seconds`` taken, and ``skipped`` (True when the part was already built).

    Raises
    ------
    ArgumentError
        No such part in the plan.
    InputError
        The input breaks the policy inside this part (the message names the record), or it
        changed since the plan was made.
    """
    work = Path(work_dir) if work_dir is not None else default_work_dir(out)
    plan = _read_plan(work)
    n = len(plan["partitions"])
    if not 0 <= index < n:
        raise ArgumentError(f"partition {index} does not exist: the plan in {work} has {n} (0 to {n - 1})")
    final = _part_dir(work, index)
    done = _read_done(final, plan)
    if done is not None:
        return {**done, "skipped": True}
    _check_input(plan)
    start = time.perf_counter()
    tmp = temp_path(final)  # unique per process: two runs of one part never write into each other
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        source = _part_source(plan, plan["partitions"][index])
        batches, digests, n_bytes, n_sites = _write_batches(source, tmp, plan["build"]["block_sites"])
        done = {
            "plan": plan["digest"],
            "index": index,
            "sites": n_sites,
            "records": int(source.filter.counts["records"]),
            "counts": dict(source.filter.counts),
            "batches": batches,
            "batch_sha256": digests,  # checked as finalise reads them: parts may wait days on a shared disk
            "bytes": n_bytes,
            "seconds": time.perf_counter() - start,
        }
        atomic_write_bytes(tmp / DONE, json.dumps(done).encode())
        _publish(tmp, final, plan)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {**done, "skipped": False}


def finalise_partitions(
    out: str | os.PathLike[str],
    *,
    work_dir: str | os.PathLike[str] | None = None,
    storage_options: dict[str, Any] | None = None,
    staging: str | os.PathLike[str] | None = None,
    force: bool = False,
    progress: bool = True,
    keep_parts: bool = False,
    **build_kwargs: Any,
) -> PanelStore:
    """Write the store from the finished parts, in order, with :func:`build_store` (step 3 of 3).

    ``build_kwargs``, when given, must equal the plan's (a check that a job script passes the
    arguments the plan was made with); the plan's are used. ``out``, ``storage_options``,
    ``staging``, ``force`` and ``progress`` are as for :func:`build_store`: a finalise step that
    is killed resumes when run again. The work directory is removed once the store is finished
    (unless ``keep_parts``).

    Raises
    ------
    StoreError
        No plan, or some parts not built.
    ArgumentError
        ``build_kwargs`` differ from the plan's.
    """
    work = Path(work_dir) if work_dir is not None else default_work_dir(out)
    plan = _read_plan(work)
    given, _ = _normalise(build_kwargs, only_given=True)
    for key, value in given.items():
        if value != plan["build"][key]:
            raise ArgumentError(
                f"{key} differs from the plan in {work} ({_show(plan['build'][key])} there, {_show(value)} here); "
                "finalise with the plan's arguments or plan again"
            )
    dones = [_read_done(_part_dir(work, i), plan) for i in range(len(plan["partitions"]))]
    missing = [i for i, d in enumerate(dones) if d is None]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise StoreError(
            f"{work}: {len(missing)} of {len(dones)} partitions are not built ({shown}); "
            "run `vcfstore partition run OUT I` for each first"
        )
    _check_input(plan)
    source = _PartsSource(plan, work, [d for d in dones if d is not None])
    store = build_store(
        source,
        out,
        **_restore(plan["build"], work),
        force=force,
        progress=progress,
        storage_options=storage_options,
        staging=staging,
    )
    if not keep_parts:
        shutil.rmtree(work, ignore_errors=True)
    return store


def build_store_parallel(
    source_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    workers: int = 2,
    partitions: int | None = None,
    policy: InputPolicy | None = None,
    af_field: str = "AF",
    work_dir: str | os.PathLike[str] | None = None,
    storage_options: dict[str, Any] | None = None,
    staging: str | os.PathLike[str] | None = None,
    force: bool = False,
    progress: bool = True,
    **build_kwargs: Any,
) -> PanelStore:
    """Build a store from an indexed VCF/BCF or a VCF Zarr store with ``workers`` local processes.

    Plans ``partitions`` parts (default ``4 * workers``, for balance), builds them in a spawned
    process pool and finalises: the store equals :func:`build_store`'s on the same input (see the
    module's description for the one attribute that differs). A run that is killed resumes: the
    finished parts are kept. A VCF without an index is built serially, with an :class:`InputWarning`.
    The first part (in input order) that fails gives the error, as a serial build would.

    Other parameters are as for :func:`plan_partitions` and :func:`finalise_partitions`.
    """
    if workers < 1:
        raise ArgumentError(f"workers must be at least 1, not {workers}")
    path = Path(source_path)
    if path.is_file() and not _index_of(path):
        warnings.warn(
            f"{path} has no .tbi/.csi index, so it is built serially; index it (bcftools index) to build in parallel",
            InputWarning,
            stacklevel=2,
        )
        return build_store(
            VcfSource(path, policy=policy, af_field=af_field),
            out,
            force=force,
            progress=progress,
            storage_options=storage_options,
            staging=staging,
            **build_kwargs,
        )
    plan = plan_partitions(
        path,
        out,
        partitions=partitions or 4 * workers,
        policy=policy,
        af_field=af_field,
        work_dir=work_dir,
        force=force,
        **build_kwargs,
    )
    work = Path(work_dir) if work_dir is not None else default_work_dir(out)
    run_partitions(out, range(len(plan["partitions"])), workers=workers, work_dir=work, progress=progress)
    return finalise_partitions(
        out, work_dir=work, storage_options=storage_options, staging=staging, force=force, progress=progress
    )


def run_partitions(
    out: str | os.PathLike[str],
    indices: range | list[int],
    *,
    workers: int,
    work_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Build the given parts in a pool of ``workers`` spawned processes; the records in ``indices`` order.

    On the first failure the parts not yet started are cancelled; the running ones finish, and the
    error of the lowest failed part is raised (the one a serial build would have met first).
    """
    from tqdm.auto import tqdm

    indices = list(indices)
    # spawn: no copy of the parent's threads, locks or open files (zarr's event loop, htslib handles).
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=max(1, min(workers, len(indices))), mp_context=ctx) as pool:
        futures: dict[Future[dict[str, Any]], int] = {
            pool.submit(build_partition, os.fspath(out), i, work_dir=work_dir): i for i in indices
        }
        with tqdm(total=len(futures), unit=" parts", disable=not progress, desc="partitions") as bar:
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                bar.update(len(finished))
                if any(f.exception() is not None for f in finished):
                    for f in pending:
                        f.cancel()
                    wait(pending)
                    break
        failed = sorted((futures[f], f.exception()) for f in futures if not f.cancelled() and f.exception() is not None)
        if failed:
            error = failed[0][1]
            assert error is not None
            raise error
        results = {futures[f]: f.result() for f in futures}
        return [results[i] for i in indices]


class _PartsSource:
    """The finished parts' sites, in plan order: a :class:`~vcfstore.sources.SiteSource` for :func:`build_store`.

    It describes itself as the planned input did and sums the parts' policy counts, so the store's
    identity and provenance are a serial build's. Each part's first site is checked against the last
    site before it (parts must continue the input's order: no position in two parts).
    """

    def __init__(self, plan: dict[str, Any], work: Path, dones: list[dict[str, Any]]) -> None:
        self.samples: list[str] = list(plan["input"]["samples"])
        self.policy = InputPolicy(**plan["policy"])
        self.filter = RecordFilter(self.policy)  # only its counts: the parts applied the policy
        self._described = dict(plan["input"]["described"])
        self._work, self._dones = work, dones

    def describe(self) -> dict[str, object]:
        return dict(self._described)

    def expected_records(self) -> int:
        return sum(int(d["records"]) for d in self._dones)

    def blocks(self, block_sites: int = 1024) -> Iterator[SiteBlock]:
        last: tuple[str, int] | None = None
        contigs_done: set[str] = set()
        for done in self._dones:
            self.filter.counts.update(done["counts"])
            part = _part_dir(self._work, done["index"])
            for k, (name, digest) in enumerate(zip(done["batches"], done["batch_sha256"], strict=True)):
                block = _read_batch(part / name, digest, done["index"])
                if k == 0 and last is not None:
                    _check_continues(last, block, contigs_done, done["index"])
                contigs_done.update(block.contigs)
                last = (block.contigs[-1], int(block.positions[-1]))
                for start in range(0, len(block), block_sites):
                    yield block.slice(start, start + block_sites)


def _check_continues(last: tuple[str, int], block: SiteBlock, contigs_done: set[str], index: int) -> None:
    contig, pos = block.contigs[0], int(block.positions[0])
    if (contig == last[0] and pos <= last[1]) or (contig != last[0] and contig in contigs_done):
        raise InputError(
            f"partition {index} starts at {contig}:{pos}, before the end of the input read so far "
            f"({last[0]}:{last[1]}): the input is not sorted, or its index does not match it"
        )


def _write_batches(
    source: VcfSource | VcfZarrSource, part: Path, block_sites: int
) -> tuple[list[str], list[str], int, int]:
    """Stream the source's sites into ``batch-NNNNNN.npz.zst`` files; returns (names, SHA-256s, bytes, sites)."""
    names: list[str] = []
    digests: list[str] = []
    pending: list[SiteBlock] = []
    n_bytes = n_sites = 0

    def flush() -> None:
        nonlocal n_bytes
        name = f"batch-{len(names):06d}.npz.zst"
        data = _encode_batch(pending)
        atomic_write_bytes(part / name, data)
        n_bytes += len(data)
        names.append(name)
        digests.append(hashlib.sha256(data).hexdigest())
        pending.clear()

    for block in source.blocks(block_sites):
        if len(block):
            pending.append(block)
            n_sites += len(block)
            if sum(b.alleles.size for b in pending) >= BATCH_BYTES:
                flush()
    if pending:
        flush()
    fsync_dir(part)
    return names, digests, n_bytes, n_sites


def _encode_batch(blocks: list[SiteBlock]) -> bytes:
    """One batch of sites as an .npz archive compressed whole (Zstd level 1: these files live minutes)."""
    from numcodecs import Zstd

    alleles = np.concatenate([b.alleles for b in blocks])
    columns: dict[str, np.ndarray] = {
        "contigs": np.asarray([c for b in blocks for c in b.contigs], dtype=str),
        "positions": np.concatenate([b.positions for b in blocks]),
        "ids": np.asarray([x for b in blocks for x in b.ids], dtype=str),
        "refs": np.asarray([x for b in blocks for x in b.refs], dtype=str),
        "alts": np.asarray([x for b in blocks for x in b.alts], dtype=str),
        "n_haplotypes": np.asarray(alleles.shape[1], dtype=np.int64),
        "alleles": np.packbits(alleles, axis=1),
    }
    if all(b.info_af is not None for b in blocks):
        columns["info_af"] = np.concatenate([b.info_af for b in blocks if b.info_af is not None])
    buf = io.BytesIO()
    np.savez(buf, **columns)  # type: ignore[arg-type]  # the stub: a ** dict might fill allow_pickle
    return bytes(Zstd(level=1).encode(buf.getvalue()))


def _read_batch(path: Path, sha256: str, index: int) -> SiteBlock:
    """A batch written by :func:`_encode_batch`, checked against its digest (a damaged part is an error, never data)."""
    from numcodecs import Zstd

    try:
        data = path.read_bytes()
    except OSError as e:
        data, reason = b"", e.strerror or str(e)
    else:
        reason = "its checksum differs from the one recorded when the part was built"
    if hashlib.sha256(data).hexdigest() != sha256:
        raise StoreError(
            f"{path}: partition {index} is damaged ({reason}); remove {path.parent} and run partition {index} again"
        )
    with np.load(io.BytesIO(Zstd().decode(data)), allow_pickle=False) as z:
        return SiteBlock(
            z["contigs"].tolist(),
            z["positions"],
            z["ids"].tolist(),
            z["refs"].tolist(),
            z["alts"].tolist(),
            np.unpackbits(z["alleles"], axis=1, count=int(z["n_haplotypes"])),
            z["info_af"] if "info_af" in z else None,
        )


def _publish(tmp: Path, final: Path, plan: dict[str, Any]) -> None:
    """Move a finished part into place; a part another run finished first is kept."""
    if _read_done(final, plan) is not None:
        return
    shutil.rmtree(final, ignore_errors=True)  # a part of an older plan
    try:
        os.rename(tmp, final)
    except OSError:
        if _read_done(final, plan) is None:  # not a run of the same part that won the race
            raise
    fsync_dir(final.parent)


def _part_dir(work: Path, index: int) -> Path:
    return work / f"part-{index:05d}"


def _read_done(part: Path, plan: dict[str, Any]) -> dict[str, Any] | None:
    """A finished part's record, or None (not built, or built for another plan)."""
    try:
        done = json.loads((part / DONE).read_text())
    except (OSError, ValueError):
        return None
    return done if done.get("plan") == plan["digest"] else None


def _read_plan(work: Path) -> dict[str, Any]:
    try:
        plan = json.loads((work / PLAN).read_text())
    except FileNotFoundError:
        raise StoreError(f"{work}: no partition plan; run `vcfstore partition init` (plan_partitions) first") from None
    except (OSError, ValueError) as e:
        raise StoreError(f"{work / PLAN}: cannot read the partition plan ({e})") from None
    if plan.get("version") != PLAN_VERSION or plan.get("digest") != _digest(plan):
        raise StoreError(f"{work / PLAN}: not a partition plan of this vcfstore version, or damaged; plan again")
    return plan


def _digest(plan: dict[str, Any]) -> str:
    body = {k: v for k, v in plan.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:32]


def _index_of(path: Path) -> Path | None:
    for ext in (".tbi", ".csi"):
        if (index := path.with_name(path.name + ext)).is_file():
            return index
    return None


def _fingerprint(path: Path) -> list[Any]:
    """Cheap evidence that the input is unchanged since the plan: sizes and modification times."""
    # A VCF Zarr store by its metadata files (as its description): stat-ing every chunk would be slow.
    files = sorted(path.rglob("zarr.json")) if path.is_dir() else [path]
    index = _index_of(path) if path.is_file() else None
    files += [index] if index is not None else []
    return [[str(p.relative_to(path.parent)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def _check_input(plan: dict[str, Any]) -> None:
    path = Path(plan["input"]["path"])
    try:
        same = _fingerprint(path) == plan["input"]["fingerprint"]
    except OSError:
        same = False
    if not same:
        raise InputError(f"{path} changed (or went) since the partitions were planned; plan again")


def _vcf_partitions(path: Path, n: int) -> list[dict[str, Any]]:
    """Position ranges of contigs, cut where the index has file offsets (balanced by compressed bytes)."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if _index_of(path) is None:
        raise InputError(
            f"{path}: a partitioned build needs the file's index (.tbi or .csi); index it with "
            f"`bcftools index {path.name}` (or `tabix -p vcf`), or build without --workers"
        )
    try:
        from bio2zarr.vcf_utils import VcfFile
    except ImportError:
        raise InputError(
            "partitioned builds of VCF/BCF read the index with bio2zarr: pip install vcfstore[parallel] (or bio2zarr)"
        ) from None
    try:
        with VcfFile(path) as vcf:
            regions = list(vcf.partition_into_regions(num_parts=n))
    except Exception as e:  # noqa: BLE001 - htslib and the index parser fail with bare exceptions
        raise InputError(f"{path}: cannot split the file by its index ({e})") from None
    if not regions:
        raise InputError(f"{path}: the file has no variant records")
    parts = [{"region": str(r), "contig": r.contig, "start": int(r.start), "end": r.end} for r in regions]
    for a, b in itertools.pairwise(parts):
        # Parts cover disjoint position ranges, in the file's order: no record can be read twice.
        if a["contig"] == b["contig"] and (a["end"] is None or b["start"] <= a["end"]):
            raise InputError(f"{path}: the index gives overlapping parts {a['region']} and {b['region']}")
    return parts


def _zarr_partitions(path: Path, n: int) -> list[dict[str, Any]]:
    """Variant-index ranges at variant-chunk boundaries, each cut moved past a shared position."""
    import zarr

    root: Any = zarr.open_group(str(path), mode="r")
    pos, contig = root["variant_position"], root["variant_contig"]
    total = int(pos.shape[0])
    chunk = int(root["call_genotype"].chunks[0])
    n_chunks = -(-total // chunk)
    k = max(1, min(n, n_chunks))
    cuts: list[int] = []
    for j in range(1, k):
        cut = round(j * n_chunks / k) * chunk
        # Records sharing a position (split multiallelic records, duplicates) stay in one part.
        while 0 < cut < total:
            stop = min(total, cut + chunk)
            before = (int(contig[cut - 1]), int(pos[cut - 1]))
            same = (contig[cut:stop] == before[0]) & (pos[cut:stop] == before[1])
            if not same.all():
                cut += int(np.argmin(same))
                break
            cut = stop
        if 0 < cut < total and (not cuts or cut > cuts[-1]):
            cuts.append(cut)
    bounds = [0, *cuts, total]
    return [{"variants": [a, b]} for a, b in itertools.pairwise(bounds)]


def _part_source(plan: dict[str, Any], part: dict[str, Any]) -> VcfSource | VcfZarrSource:
    info, policy = plan["input"], InputPolicy(**plan["policy"])
    if info["kind"] == "vcf-zarr":
        return VcfZarrSource(info["path"], policy=policy, variants=tuple(part["variants"]))
    return VcfSource(
        info["path"], region=part["region"], policy=policy, af_field=info["af_field"], min_pos=part["start"]
    )


def _build_defaults() -> dict[str, Any]:
    params = inspect.signature(build_store).parameters
    return {k: params[k].default for k in BUILD_KEYS}


def _normalise(kwargs: dict[str, Any], *, only_given: bool = False) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Build parameters as JSON values (arrays by their digest; their .npy bytes beside)."""
    unknown = sorted(set(kwargs) - set(BUILD_KEYS))
    if unknown:
        raise ArgumentError(f"not a build parameter of a partitioned build: {', '.join(unknown)}")
    values = dict(kwargs) if only_given else {**_build_defaults(), **kwargs}
    out: dict[str, Any] = {}
    arrays: dict[str, bytes] = {}
    for key, value in values.items():
        if key in _ARRAYS and value is not None and not isinstance(value, str):
            buf = io.BytesIO()
            np.save(buf, np.asarray(value), allow_pickle=False)
            arrays[key] = buf.getvalue()
            out[key] = {"npy_sha256": hashlib.sha256(arrays[key]).hexdigest()}
        elif key == "vocab":
            out[key] = None if value is None else value.to_dict()
        elif key == "annotations":
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise ArgumentError("a partitioned build takes annotations as the path of the .panel file")
            out[key] = None if value is None else {"path": str(Path(value).resolve()), "sha256": file_sha256(value)}
        else:
            out[key] = value
    return out, arrays


def _restore(build: dict[str, Any], work: Path) -> dict[str, Any]:
    """The plan's build parameters as :func:`build_store` takes them."""
    kwargs = dict(build)
    for key in _ARRAYS:
        if isinstance(kwargs[key], dict):
            data = (work / f"{key}.npy").read_bytes()
            if hashlib.sha256(data).hexdigest() != kwargs[key]["npy_sha256"]:
                raise StoreError(f"{work / key}.npy does not match the partition plan; plan again")
            kwargs[key] = np.load(io.BytesIO(data), allow_pickle=False)
    if kwargs["vocab"] is not None:
        kwargs["vocab"] = Vocabulary.from_dict(kwargs["vocab"])
    if kwargs["annotations"] is not None:
        panel = kwargs["annotations"]
        if file_sha256(panel["path"]) != panel["sha256"]:
            raise InputError(f"{panel['path']} changed since the partitions were planned; plan again")
        kwargs["annotations"] = panel["path"]
    return kwargs


def _show(value: Any) -> str:
    return "an array" if isinstance(value, dict) and "npy_sha256" in value else json.dumps(value)


__all__ = [
    "BUILD_KEYS",
    "build_partition",
    "build_store_parallel",
    "default_work_dir",
    "finalise_partitions",
    "plan_partitions",
    "run_partitions",
]
