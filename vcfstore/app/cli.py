"""The ``vcfstore`` command line: build (serial, --workers, or partition init/run/finalise), info, verify, demo."""

from __future__ import annotations

import functools
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from vcfstore.app.display import print_store_info
from vcfstore.errors import InputWarning, VcfstoreError
from vcfstore.store.builder import DEFAULT_ZSTD_LEVEL


def _user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn vcfstore's own errors into a one-line message and exit status 1 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except VcfstoreError as e:
            raise click.ClickException(str(e)) from None

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vcfstore")
def main() -> None:
    """vcfstore: reference panels in chunked Zarr stores for retrieval-augmented imputation."""


def _storage_options(text: str | None) -> dict[str, Any] | None:
    """``--storage-options``: a JSON object, or ``@file`` holding one (fsspec's options for s3://... URLs)."""
    if text is None:
        return None
    try:
        value = json.loads(Path(text[1:]).read_text() if text.startswith("@") else text)
    except (OSError, ValueError) as e:
        hint = "--storage-options"
        raise click.BadParameter(f"not a JSON object or @file holding one ({e})", param_hint=hint) from None
    if not isinstance(value, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--storage-options")
    return value


def _location(text: str) -> str | Path:
    """A store URL as given (a Path would fold ``s3://`` into ``s3:/``), else a local path."""
    from vcfstore.store.remote import is_url

    return text if is_url(text) else Path(text)


_STORAGE_OPTIONS = click.option(
    "--storage-options",
    metavar="JSON",
    help='For s3://... stores: fsspec options as a JSON object or @file, e.g. \'{"endpoint_url": "http://..."}\' '
    "(credentials come from the usual AWS environment unless given here).",
)
_WORK_DIR = click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the partition plan and the parts go [default: .NAME.partitions beside OUT; "
    "a directory under the system's temporary directory for a URL].",
)


def _policy_option(flag: str, choices: tuple[str, ...], help_text: str) -> Callable[..., Any]:
    """An input-policy option (see ``InputPolicy``); the first choice is the default."""
    return click.option(flag, type=click.Choice(choices), default=choices[0], show_default=True, help=help_text)


def _build_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options that shape a store, shared by ``build`` and ``partition init``."""
    options = [
        click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, path_type=Path)),
        click.argument("out_dir", metavar="OUT"),
        click.option("--window-size", type=int, default=None, help="Sites per window [default: max-seq-len - 2]."),
        click.option("--overlap", type=int, default=0, show_default=True, help="Sites shared by consecutive windows."),
        click.option(
            "--windows",
            "windows_csv",
            type=click.Path(exists=True, path_type=Path),
            help="CSV of [start, end) site indices (columns start,end) instead of fixed windows.",
        ),
        click.option("--allow-overlap", is_flag=True, help="Let the --windows CSV's windows share sites."),
        click.option(
            "--samples-panel",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="A 1000 Genomes .panel file (sample pop super_pop gender): stored, with per-super-population "
            "frequencies.",
        ),
        click.option(
            "--af-from",
            default="panel",
            show_default=True,
            metavar="panel|info|FILE",
            help="AF computed from the panel, read from INFO/AF, or from FILE: a TSV/CSV table with columns "
            "chrom, pos, ref, alt, af covering every site, or a .npy array of one value per kept site.",
        ),
        click.option(
            "--max-seq-len", type=int, default=1030, show_default=True, help="Tokens per window: [SOS] sites [EOS] pad."
        ),
        click.option(
            "--zstd-level",
            type=click.IntRange(1, 22),
            default=DEFAULT_ZSTD_LEVEL,
            show_default=True,
            help="Zstd level of the allele chunks: 15 makes them 7-12% smaller for 6-10x the compression work.",
        ),
        _policy_option(
            "--multiallelic",
            ("split", "skip", "collapse"),
            "Records with several ALTs: one site per ALT, none, or one site where any ALT is 1 (VCF-Bert's loader).",
        ),
        _policy_option("--non-snv", ("skip", "keep"), "Indels and symbolic alleles."),
        _policy_option("--unphased", ("error", "skip-site", "keep"), "Unphased heterozygous calls."),
        _policy_option("--missing", ("error", "skip-site", "ref"), "Missing alleles."),
        _policy_option(
            "--duplicates", ("error", "skip"), "Records repeating a kept site (same contig, position, REF and ALT)."
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _store_kwargs(
    window_size: int | None,
    overlap: int,
    windows_csv: Path | None,
    allow_overlap: bool,
    samples_panel: Path | None,
    af_from: str,
    max_seq_len: int,
    zstd_level: int,
) -> dict[str, Any]:
    """build_store's keyword arguments from the shared options (the --windows CSV read here)."""
    from vcfstore.store.windows import read_windows_csv

    if windows_csv and (window_size is not None or overlap):
        raise click.UsageError("--windows gives the windows; it cannot be combined with --window-size or --overlap")
    if allow_overlap and not windows_csv:
        raise click.UsageError("--allow-overlap applies to a --windows CSV (fixed windows overlap by --overlap)")
    return {
        "window_size": window_size,
        "overlap": overlap,
        "windows": read_windows_csv(windows_csv, allow_overlap=allow_overlap) if windows_csv else None,
        "allow_overlap": allow_overlap,
        "max_seq_len": max_seq_len,
        "zstd_level": zstd_level,
        "af_from": af_from,
        "annotations": samples_panel,
    }


@main.command()
@_build_options
@click.option("--region", help="Only chr:start-end (needs a .tbi/.csi index; not with --workers).")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Processes: above 1, an indexed VCF/BCF or a VCF Zarr store is built in parts in parallel "
    "(the same store, byte for byte; a VCF without an index is built serially, with a warning).",
)
@click.option("--partitions", type=click.IntRange(min=1), help="Parts of a --workers build [default: 4 x workers].")
@_WORK_DIR
@_STORAGE_OPTIONS
@click.option("--force", is_flag=True, help="Replace an existing store in OUT.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_user_errors
def build(
    input_path: Path,
    out_dir: str,
    window_size: int | None,
    overlap: int,
    windows_csv: Path | None,
    allow_overlap: bool,
    samples_panel: Path | None,
    af_from: str,
    max_seq_len: int,
    zstd_level: int,
    region: str | None,
    workers: int,
    partitions: int | None,
    work_dir: Path | None,
    storage_options: str | None,
    force: bool,
    quiet: bool,
    **policy: str,
) -> None:
    """Build a panel store in OUT from a VCF/BCF file or a VCF Zarr directory.

    OUT is a directory or an object-storage URL (s3://bucket/panel.vcfstore: built in a local
    staging directory, then uploaded and checked). Streams the input; a build that was killed or
    stopped by a file-system error (disk full, read-only, permissions) resumes when run again with
    the same arguments. With --workers N the parts are built by N processes and kept until the
    store is finished, so a killed run also resumes.
    """
    from vcfstore.sources import InputPolicy, open_source
    from vcfstore.store.builder import build_store
    from vcfstore.store.partitioned import build_store_parallel

    if region and workers > 1:
        raise click.UsageError("--region builds one region serially; leave out --workers (or index and cut the file)")
    if (partitions or work_dir) and workers == 1:
        raise click.UsageError("--partitions and --work-dir apply to a parallel build (--workers 2 or more)")
    options = _storage_options(storage_options)
    with warnings.catch_warnings():
        warnings.showwarning = _show_input_warning(warnings.showwarning)
        kwargs = _store_kwargs(
            window_size, overlap, windows_csv, allow_overlap, samples_panel, af_from, max_seq_len, zstd_level
        )
        input_policy = InputPolicy(**policy)  # type: ignore[arg-type]  # click checked the choices
        common: dict[str, Any] = {"force": force, "progress": not quiet, "storage_options": options}
        if workers > 1:
            store = build_store_parallel(
                input_path,
                _location(out_dir),
                workers=workers,
                partitions=partitions,
                policy=input_policy,
                work_dir=work_dir,
                **common,
                **kwargs,
            )
        else:
            source = open_source(input_path, region=region, policy=input_policy)
            store = build_store(source, _location(out_dir), **common, **kwargs)
    print_store_info(store.info())


@main.group()
def partition() -> None:
    """Build a store in parts, one job each (cluster job arrays): init, run I, finalise.

    `partition init INPUT OUT --partitions N [build options]` cuts an indexed VCF/BCF (by
    position ranges, from its .tbi/.csi index) or a VCF Zarr store (by variant chunks) and writes
    the plan into --work-dir; `partition run OUT I` builds part I (rerunning a finished part does
    nothing; a killed one is redone); `partition finalise OUT` writes the store from the parts in
    order and removes them. The store equals a serial `vcfstore build` byte for byte (only the
    root attribute `finished`, a time stamp, differs). The work directory must be reachable from
    every job; give the same --work-dir to all three.
    """


@partition.command("init")
@_build_options
@click.option(
    "--partitions", type=click.IntRange(min=1), required=True, help="How many parts (a VCF may give fewer or more)."
)
@_WORK_DIR
@click.option("--force", is_flag=True, help="Replace a plan made with other arguments.")
@_user_errors
def partition_init(
    input_path: Path,
    out_dir: str,
    window_size: int | None,
    overlap: int,
    windows_csv: Path | None,
    allow_overlap: bool,
    samples_panel: Path | None,
    af_from: str,
    max_seq_len: int,
    zstd_level: int,
    partitions: int,
    work_dir: Path | None,
    force: bool,
    **policy: str,
) -> None:
    """Plan a partitioned build of INPUT into OUT; prints the work directory and the number of parts (JSON)."""
    from vcfstore.sources import InputPolicy
    from vcfstore.store.partitioned import default_work_dir, plan_partitions

    kwargs = _store_kwargs(
        window_size, overlap, windows_csv, allow_overlap, samples_panel, af_from, max_seq_len, zstd_level
    )
    plan = plan_partitions(
        input_path,
        _location(out_dir),
        partitions=partitions,
        policy=InputPolicy(**policy),  # type: ignore[arg-type]  # click checked the choices
        work_dir=work_dir,
        force=force,
        **kwargs,
    )
    work = work_dir or default_work_dir(_location(out_dir))
    click.echo(json.dumps({"work_dir": str(work), "partitions": len(plan["partitions"])}))


@partition.command("run")
@click.argument("out_dir", metavar="OUT")
@click.argument("index", metavar="I", type=click.IntRange(min=0))
@_WORK_DIR
@_user_errors
def partition_run(out_dir: str, index: int, work_dir: Path | None) -> None:
    """Build part I of the planned build of OUT; prints its sites, records, bytes and seconds (JSON)."""
    from vcfstore.store.partitioned import build_partition

    record = build_partition(_location(out_dir), index, work_dir=work_dir)
    click.echo(json.dumps({k: record[k] for k in ("index", "sites", "records", "bytes", "seconds", "skipped")}))


@partition.command("finalise")
@click.argument("out_dir", metavar="OUT")
@_WORK_DIR
@_STORAGE_OPTIONS
@click.option("--force", is_flag=True, help="Replace an existing store in OUT.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_user_errors
def partition_finalise(
    out_dir: str, work_dir: Path | None, storage_options: str | None, force: bool, quiet: bool
) -> None:
    """Write the store OUT from its finished parts (with the plan's arguments) and remove the parts."""
    from vcfstore.store.partitioned import finalise_partitions

    with warnings.catch_warnings():
        warnings.showwarning = _show_input_warning(warnings.showwarning)
        store = finalise_partitions(
            _location(out_dir),
            work_dir=work_dir,
            storage_options=_storage_options(storage_options),
            force=force,
            progress=not quiet,
        )
    print_store_info(store.info())


def _show_input_warning(default: Callable[..., None]) -> Callable[..., None]:
    """A ``warnings.showwarning`` printing vcfstore's input warnings as one ``Warning:`` line."""

    def show(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, InputWarning):
            click.echo(f"Warning: {message}", err=True)
        else:
            default(message, category, *args, **kwargs)

    return show


@main.command()
@click.argument("store_dir", metavar="STORE")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_STORAGE_OPTIONS
@_user_errors
def info(store_dir: str, as_json: bool, storage_options: str | None) -> None:
    """Counts, windows, bytes on disk and compression of a panel store (a directory or an s3://... URL)."""
    from vcfstore.store.reader import open_store

    summary = open_store(_location(store_dir), storage_options=_storage_options(storage_options)).info()
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        print_store_info(summary)


@main.command()
@click.argument("location", metavar="PATH")
@_STORAGE_OPTIONS
@_user_errors
def verify(location: str, storage_options: str | None) -> None:
    """Check every file of a panel store (a directory or an s3://... URL) or an index set against its checksums.

    Reads and hashes everything; prints each damaged part and exits with status 1 if any.
    """
    from vcfstore.index.manifest import MANIFEST
    from vcfstore.store.reader import open_store

    path = _location(location)
    if isinstance(path, Path) and (path / MANIFEST).is_file():
        problems = _verify_index_set(path)
    else:
        problems = open_store(path, storage_options=_storage_options(storage_options)).verify()
    for line in problems:
        click.echo(line, err=True)
    if problems:
        raise click.ClickException(f"{path}: {len(problems)} damaged part(s)")
    click.echo(f"{path}: intact")


def _verify_index_set(path: Path) -> list[str]:
    from vcfstore.index.manifest import Manifest, verify_index_files

    manifest = Manifest.load(path)
    return [
        f"{path}: window {w}: {manifest.windows[w].file} is missing or does not match the manifest"
        for w in verify_index_files(path, manifest)
    ]


@main.command()
@click.option(
    "--vcf",
    "vcf_path",
    type=click.Path(exists=True, path_type=Path),
    help="Use this VCF/BCF instead of a simulated panel.",
)
@click.option(
    "--out", "out_dir", type=click.Path(path_type=Path), help="Keep the store here [default: a temporary directory]."
)
@click.option("--samples", type=int, default=1004, show_default=True, help="Simulated diploid samples.")
@click.option("--length", type=float, default=10e6, show_default=True, help="Simulated sequence length (bp).")
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--train-steps", type=int, default=60, show_default=True, help="Steps of the training run (0: skip).")
@_user_errors
def demo(vcf_path: Path | None, out_dir: Path | None, samples: int, length: float, seed: int, train_steps: int) -> None:
    """Simulate a panel (msprime), build a store, retrieve under a memory budget, train briefly."""
    from vcfstore.app.demo import run_demo

    run_demo(
        vcf_path=vcf_path,
        out_dir=out_dir,
        n_samples=samples,
        sequence_length=length,
        seed=seed,
        train_steps=train_steps,
        echo=click.echo,
    )
    click.echo("demo finished")


if __name__ == "__main__":
    main()
