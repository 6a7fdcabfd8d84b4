"""Runs into object storage, on fsspec's in-process memory filesystem (a real fsspec store with
no rename and no append, as S3 has): same outputs as a local run, objects written whole, resume,
and usage errors before anything is written. S3 itself and the Ray engine: test_ray_engine.py."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import pytest
from conftest import tiny_config

from autolabel.cli import main
from autolabel.errors import UsageError
from autolabel.runner import run_job


@pytest.fixture
def memory() -> fsspec.AbstractFileSystem:
    """The memory filesystem, emptied before and after the test."""
    fs = fsspec.filesystem("memory")
    fs.store.clear()
    fs.pseudo_dirs[:] = [""]
    yield fs
    fs.store.clear()
    fs.pseudo_dirs[:] = [""]


def outputs(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, bytes]:
    """Every object under root (state and run.json aside), by path relative to it."""
    found = {p[len(root) + 1 :]: fs.cat_file(p) for p in fs.find(root)}
    return {k: v for k, v in found.items() if not k.startswith((".autolabel/", "run.json"))}


def local_outputs(out: Path) -> dict[str, bytes]:
    """The same files of a local run (report.html and its thumbnails aside)."""
    keep = ("annotations.json", "manifest.jsonl", "masks/", "previews/")
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    return {k: v for k, v in files.items() if k.startswith(keep)}


def strip_seconds(manifest: bytes) -> list[dict]:
    rows = [json.loads(line) for line in manifest.decode().splitlines()]
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def test_memory_store_gets_the_outputs_of_a_local_run_and_resumes(
    memory, tmp_path, image_folder, vocab_file, tiny_recipe, capsys
) -> None:
    local = tmp_path / "local"
    run_job(tiny_config(image_folder, vocab_file, local, tiny_recipe, previews=True))
    memory.put(str(image_folder), "/in", recursive=True)
    (image_folder / "sub" / "c.png").unlink()  # the local copy no longer matters

    config = tiny_config("memory://in", vocab_file, "memory://out", tiny_recipe, previews=True)
    summary = run_job(config)
    assert summary.ok == 3 and summary.out == "memory://out"
    remote, expected = outputs(memory, "/out"), local_outputs(local)
    # report.html is made from a local copy of the run and uploaded, thumbnails beside it.
    report = remote.pop("report.html").decode()
    thumbs = sorted(k for k in remote if k.startswith("report/"))
    for key in thumbs:
        del remote[key]
    assert thumbs == sorted(
        p.relative_to(local).as_posix() for p in (local / "report").rglob("*") if p.is_file()
    )
    assert len(thumbs) == 3 and all(t in report for t in ("a.png", "b.jpg", "sub/c.png"))
    manifests = remote.pop("manifest.jsonl"), expected.pop("manifest.jsonl")
    assert remote == expected  # annotations.json, masks and previews, byte for byte
    assert strip_seconds(manifests[0]) == strip_seconds(manifests[1])
    records = memory.find("/out/.autolabel/records")
    names = ("a.png", "b.jpg", "sub/c.png")
    assert sorted(records) == [f"/out/.autolabel/records/{f}.json" for f in names]
    run_info = json.loads(memory.cat_file("/out/run.json"))
    assert run_info["images_root"] == "memory://in"
    # eval reads a run in object storage (a local copy): its masks against the local run's.
    assert main(["eval", "memory://out", "--gt-masks", str(local / "masks"), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["images"] == 3 and scores["pixel_accuracy"] == 1.0

    again = run_job(config)
    assert again.resumed == 3 and again.ok == 3
    # A replaced object is labelled again; the others are not.
    memory.pipe_file("/in/b.jpg", (image_folder / "a.png").read_bytes())
    third = run_job(config)
    assert third.resumed == 2 and third.ok == 3


def test_a_record_names_only_outputs_that_exist(
    memory, image_folder, vocab_file, tiny_recipe
) -> None:
    """Killed after its masks but before annotations.json: what a resume trusts is all there."""
    memory.put(str(image_folder), "/in", recursive=True)
    config = tiny_config("memory://in", vocab_file, "memory://out", tiny_recipe)
    run_job(config)
    memory.rm_file("/out/masks/b.png")  # an object lost after the fact: that image is redone
    memory.rm_file("/out/annotations.json")
    summary = run_job(config)
    assert summary.resumed == 2 and summary.ok == 3
    assert memory.isfile("/out/masks/b.png") and memory.isfile("/out/annotations.json")


def test_usage_errors_before_anything_is_written(
    memory, tmp_path, image_folder, vocab_file, tiny_recipe, capsys
) -> None:
    args = ["run", str(image_folder), "--vocab", str(vocab_file), "--recipe", str(tiny_recipe)]
    assert main([*args, "-o", "nosuch://bucket/out"]) == 2
    assert "nosuch://bucket/out" in capsys.readouterr().err
    assert main([*args, "-o", str(tmp_path / "o"), "--workers", "2"]) == 2
    assert "--workers is an option of --engine ray" in capsys.readouterr().err
    assert main([*args, "-o", str(tmp_path / "o"), "--cpu-workers", "-1"]) == 2
    assert "--cpu-workers must be a whole number >= 0" in capsys.readouterr().err
    ray = ["--engine", "ray", "--cpu-workers", "2"]
    assert main([*args, "-o", str(tmp_path / "o"), *ray]) == 2
    assert "--cpu-workers is an option of --engine local" in capsys.readouterr().err
    assert main([*args, "-o", "memory://out", "--storage-options", "[1]"]) == 2
    assert "--storage-options" in capsys.readouterr().err
    with pytest.raises(UsageError, match="memory://nothing: not a folder of images"):
        run_job(tiny_config("memory://nothing", vocab_file, tmp_path / "o", tiny_recipe))
    assert not (tmp_path / "o").exists() and memory.find("/") == []


def test_file_urls_are_local_folders(tmp_path, image_folder, vocab_file, tiny_recipe) -> None:
    out = tmp_path / "out"
    config = tiny_config(f"file://{image_folder}", vocab_file, f"file://{out}", tiny_recipe)
    summary = run_job(config)
    assert summary.ok == 3 and (out / ".autolabel" / "records.jsonl").is_file()


def test_listing_a_prefix_passes_over_what_a_folder_scan_passes_over(
    memory, image_folder, vocab_file, tiny_recipe
) -> None:
    memory.put(str(image_folder), "/in", recursive=True)
    memory.pipe_file("/in/notes.txt", b"text")
    memory.pipe_file("/in/.hidden/x.png", (image_folder / "a.png").read_bytes())
    memory.pipe_file("/in/old/.autolabel/state.json", b"{}")  # another run's output folder
    memory.pipe_file("/in/old/masks/a.png", (image_folder / "a.png").read_bytes())
    config = tiny_config("memory://in", vocab_file, "memory://in/out", tiny_recipe)
    for _ in range(2):  # the second run must not take its own masks for images
        summary = run_job(config)
        assert summary.found == 3 and summary.ok == 3
        assert summary.skipped == [
            ("notes.txt", "not a supported image type (.txt)"),
            ("old", "output folder of another autolabel run (not scanned)"),
        ]


def test_an_unreachable_endpoint_is_a_usage_error_naming_the_url(
    monkeypatch, image_folder, vocab_file, tiny_recipe, capsys
) -> None:
    pytest.importorskip("s3fs")
    # Credentials from the environment, so botocore never asks an instance-metadata service.
    for name, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ):
        monkeypatch.setenv(name, value)
    # Loopback, nothing listening; one try (the default retries take about ten seconds).
    retry_once = {"retries": 1, "config_kwargs": {"retries": {"max_attempts": 1}}}
    options = json.dumps({"endpoint_url": "http://127.0.0.1:9", **retry_once})
    args = ["run", str(image_folder), "--vocab", str(vocab_file), "--recipe", str(tiny_recipe)]
    assert main([*args, "-o", "s3://bucket/out", "--storage-options", options]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: s3://bucket/out: cannot reach the store (") and "\n" not in err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.integration
def test_wrong_credentials_are_a_usage_error_naming_the_url(
    monkeypatch, tmp_path, image_folder, vocab_file, tiny_recipe, capsys
) -> None:
    """A real S3 server (moto, loopback only) that checks keys: a run with keys it does not know
    stops with one line naming the URL, before anything is written."""
    boto3 = pytest.importorskip("boto3")
    pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    # moto enforces authentication after this many requests: the bucket is made, then keys count.
    env = {"INITIAL_NO_AUTH_ACTION_COUNT": "1", "PATH": "/usr/bin:/bin"}
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "moto server did not start"
                time.sleep(0.1)
        client = boto3.client(
            "s3", endpoint_url=endpoint, region_name="us-east-1",
            aws_access_key_id="setup", aws_secret_access_key="setup",
        )  # fmt: skip
        client.create_bucket(Bucket="bucket")
        options = json.dumps({"endpoint_url": endpoint, "key": "wrong", "secret": "wrong"})
        args = ["run", str(image_folder), "--vocab", str(vocab_file), "--recipe", str(tiny_recipe)]
        code = main([*args, "-o", "s3://bucket/out", "--storage-options", options])
        err = capsys.readouterr().err.strip()
        assert code == 2, err
        assert err.startswith("error: s3://bucket/out: access denied; check the credentials")
        assert "\n" not in err
    finally:
        server.kill()
        server.wait(timeout=30)
