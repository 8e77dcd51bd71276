"""The ``vcfstore`` command line: build, info, demo."""

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


@main.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, path_type=Path))
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--window-size", type=int, default=None, help="Sites per window [default: max-seq-len - 2].")
@click.option("--overlap", type=int, default=0, show_default=True, help="Sites shared by consecutive windows.")
@click.option(
    "--windows",
    "windows_csv",
    type=click.Path(exists=True, path_type=Path),
    help="CSV of [start, end) site indices (columns start,end) instead of fixed windows.",
)
@click.option("--allow-overlap", is_flag=True, help="Let the --windows CSV's windows share sites.")
@click.option(
    "--samples-panel",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A 1000 Genomes .panel file (sample pop super_pop gender): stored, with per-super-population frequencies.",
)
@click.option(
    "--af-from",
    default="panel",
    show_default=True,
    metavar="panel|info|FILE",
    help="AF computed from the panel, read from INFO/AF, or from FILE: a TSV/CSV table with columns "
    "chrom, pos, ref, alt, af covering every site, or a .npy array of one value per kept site.",
)
@click.option("--region", help="Only chr:start-end (needs a .tbi/.csi index).")
@click.option(
    "--max-seq-len", type=int, default=1030, show_default=True, help="Tokens per window: [SOS] sites [EOS] pad."
)
@click.option(
    "--multiallelic",
    type=click.Choice(["split", "skip", "collapse"]),
    default="split",
    show_default=True,
    help="Records with several ALTs: one site per ALT, none, or one site where any ALT is 1 (VCF-Bert's loader).",
)
@click.option(
    "--non-snv",
    type=click.Choice(["skip", "keep"]),
    default="skip",
    show_default=True,
    help="Indels and symbolic alleles.",
)
@click.option(
    "--unphased",
    type=click.Choice(["error", "skip-site", "keep"]),
    default="error",
    show_default=True,
    help="Unphased heterozygous calls.",
)
@click.option(
    "--missing",
    type=click.Choice(["error", "skip-site", "ref"]),
    default="error",
    show_default=True,
    help="Missing alleles.",
)
@click.option(
    "--duplicates",
    type=click.Choice(["error", "skip"]),
    default="error",
    show_default=True,
    help="Records repeating a kept site (same contig, position, REF and ALT).",
)
@click.option("--force", is_flag=True, help="Replace an existing store in OUT_DIR.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_user_errors
def build(
    input_path: Path,
    out_dir: Path,
    window_size: int | None,
    overlap: int,
    windows_csv: Path | None,
    allow_overlap: bool,
    samples_panel: Path | None,
    af_from: str,
    region: str | None,
    max_seq_len: int,
    force: bool,
    quiet: bool,
    **policy: str,
) -> None:
    """Build a panel store in OUT_DIR from a VCF/BCF file or a VCF Zarr directory.

    Streams the input; a build that was killed or stopped by a file-system error (disk full,
    read-only, permissions) resumes when run again with the same arguments.
    """
    from vcfstore.sources import InputPolicy, open_source
    from vcfstore.store.builder import build_store
    from vcfstore.store.windows import read_windows_csv

    if windows_csv and (window_size is not None or overlap):
        raise click.UsageError("--windows gives the windows; it cannot be combined with --window-size or --overlap")
    if allow_overlap and not windows_csv:
        raise click.UsageError("--allow-overlap applies to a --windows CSV (fixed windows overlap by --overlap)")
    with warnings.catch_warnings():
        warnings.showwarning = _show_input_warning(warnings.showwarning)
        source = open_source(input_path, region=region, policy=InputPolicy(**policy))  # type: ignore[arg-type]  # click checked the choices
        windows = read_windows_csv(windows_csv, allow_overlap=allow_overlap) if windows_csv else None
        store = build_store(
            source,
            out_dir,
            window_size=window_size,
            overlap=overlap,
            windows=windows,
            allow_overlap=allow_overlap,
            max_seq_len=max_seq_len,
            af_from=af_from,
            annotations=samples_panel,
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
@click.argument("store_dir", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_user_errors
def info(store_dir: Path, as_json: bool) -> None:
    """Counts, windows, bytes on disk and compression of a panel store."""
    from vcfstore.store.reader import open_store

    summary = open_store(store_dir).info()
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        print_store_info(summary)


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@_user_errors
def verify(path: Path) -> None:
    """Check every file of a panel store or an index set against its checksums.

    Reads and hashes everything; prints each damaged part and exits with status 1 if any.
    """
    from vcfstore.index.manifest import MANIFEST
    from vcfstore.store.reader import PanelStore

    if (path / MANIFEST).is_file():
        problems = _verify_index_set(path)
    else:
        problems = PanelStore(path).verify()
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
