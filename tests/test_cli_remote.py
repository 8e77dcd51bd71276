"""The command line with store URLs: build to, and info and verify of, s3://... stores (moto's S3 server)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from tests.conftest import BUCKET
from vcfstore.app.cli import main


def test_build_info_verify_on_s3(s3, real_data, tmp_path):
    runner = CliRunner()
    vcf = str(real_data / "reference.vcf.gz")
    options = json.dumps(s3.storage_options())
    local = tmp_path / "local.vcfstore"
    assert runner.invoke(main, ["build", vcf, str(local), "--window-size", "500", "--quiet"]).exit_code == 0
    want = json.loads(runner.invoke(main, ["info", str(local), "--json"]).output)
    for url, extra in (
        (f"s3://{BUCKET}/cli.vcfstore", []),
        (f"s3://{BUCKET}/cli-workers.vcfstore", ["--workers", "2", "--work-dir", str(tmp_path / "parts")]),
    ):
        r = runner.invoke(
            main, ["build", vcf, url, "--window-size", "500", "--quiet", "--storage-options", options, *extra]
        )
        assert r.exit_code == 0, r.output
        r = runner.invoke(main, ["info", url, "--json", "--storage-options", options])
        assert r.exit_code == 0, r.output
        got = json.loads(r.output)
        assert got["path"] == url  # not folded into s3:/...
        assert got["identity"] == want["identity"] and got["bytes_on_disk"] == want["bytes_on_disk"]
        r = runner.invoke(main, ["verify", url, "--storage-options", options])
        assert r.exit_code == 0 and f"{url}: intact" in r.output, r.output
    assert not (tmp_path / "parts").exists()  # the parts are removed once the store is uploaded


def test_url_errors_are_one_line(s3, tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["info", f"s3://{BUCKET}/absent.vcfstore", "--storage-options", "{not json"])
    assert r.exit_code == 2 and "Invalid value for --storage-options: not a JSON object" in r.output
    options = json.dumps(s3.storage_options())
    r = runner.invoke(main, ["verify", f"s3://{BUCKET}/absent.vcfstore", "--storage-options", options])
    assert r.exit_code == 1 and "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
    (tmp_path / "o.json").write_text(options)
    r = runner.invoke(main, ["info", f"s3://{BUCKET}/absent.vcfstore", "--storage-options", f"@{tmp_path / 'o.json'}"])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
