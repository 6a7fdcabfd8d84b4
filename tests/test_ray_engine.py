"""`--engine ray` on a real Ray cluster (a head node and one more worker node, `ray start`) with
images and outputs in a real S3 server (moto), against a local run of the same scenes.

Everything runs in tests/ray_scenario.py inside a private network namespace holding only
loopback (Ray binds to the machine's interface otherwise, after a routing lookup toward a public
resolver) and a private process namespace (whatever the cluster leaves behind ends with it).
That needs root (CI runs as root), Ray, s3fs and moto: without them the test skips locally and
fails under CI=true.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
SCENARIO = Path(__file__).with_name("ray_scenario.py")
IMAGES = [f"{i:05d}.png" for i in range(12)]


def missing() -> str:
    """Why the scenario cannot run here, or ""."""
    for module in ("ray", "s3fs", "moto"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install -e '.[test]')"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare and ip (util-linux, iproute2) are needed for a loopback-only namespace"
    if os.geteuid() != 0:
        return "a private network namespace needs root"
    return ""


@pytest.fixture(scope="module")
def seen(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """What the scenario saw (it takes a few minutes on two cores)."""
    reason = missing()
    if reason:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"the Ray scenario must run in CI: {reason}")
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("ray")
    command = ["unshare", "-n", "-p", "-f", "--mount-proc", "--", sys.executable, str(SCENARIO)]
    done = subprocess.run([*command, str(work)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_s3_on_ray_with_a_worker_killed_equals_a_local_run(seen: dict) -> None:
    assert seen["reference_rc"] == 1  # broken.png fails, as it must
    run = seen["s3_rc"]
    assert run["rc"] == 1, run
    assert seen["killed"]["title"].startswith("ray::Worker")
    assert seen["records_at_kill"] < len(IMAGES)  # killed while images were still to do
    s3 = seen["s3"]
    assert s3["annotations_equal"] and s3["masks_equal"] and s3["masks"] == len(IMAGES)
    assert s3["manifest_files"] == [*IMAGES, "broken.png"]  # each image once
    assert s3["failed"] == ["broken.png"]


@pytest.mark.parametrize("name", ["ray_then_local", "local_then_ray"])
def test_resume_across_engines(seen: dict, name: str) -> None:
    run = seen[name]
    assert run["rc"] == 1 and run["failed"] == ["broken.png"]
    assert run["records_at_kill"] >= 3 and 0 < run["resumed"] < len(IMAGES)
    assert run["annotations_equal"] and run["masks_equal"]
    assert run["manifest_files"] == [*IMAGES, "broken.png"]


def test_a_missing_bucket_is_a_usage_error(seen: dict) -> None:
    run = seen["missing_bucket"]
    assert run["rc"] == 2
    assert run["stderr"].strip() == "error: s3://nobucket/out: bucket 'nobucket' does not exist"


def test_no_gpu_and_no_cluster_are_usage_errors_before_anything_is_written(seen: dict) -> None:
    no_gpu, down = seen["no_gpu"], seen["unreachable"]
    assert no_gpu["rc"] == 2 and not no_gpu["written"]
    assert "0 GPU(s), but 2 worker(s) x 1 GPU(s) were asked for" in no_gpu["stderr"]
    assert down["rc"] == 2 and not down["written"]
    assert "error: Ray cluster at 127.0.0.1:1: cannot connect" in down["stderr"]
