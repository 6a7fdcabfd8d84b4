"""One bounded Ray + S3 scenario for tests/test_ray_engine.py, run inside a private network and
process namespace (loopback only): `unshare -n -p -f --mount-proc`, then this script.

It starts a moto S3 server, a Ray head node and one more Ray worker node (`ray start --block`,
one CPU each), labels toy-world scenes with the real CLI, and prints one JSON object of what it
saw for the test to assert on. Everything it starts is stopped by process id at the end (and the
process namespace ends whatever those leave behind when this script exits).

    python tests/ray_scenario.py WORKDIR
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
S3_PORT, RAY_PORT = 5355, 6388
ENDPOINT = f"http://127.0.0.1:{S3_PORT}"
IMAGES = 12
STORAGE = json.dumps({"endpoint_url": ENDPOINT})
ENV = {
    **os.environ,
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def main(work: Path) -> dict:
    """Run every step; return what each saw."""
    started: list[subprocess.Popen] = []
    # Ray keeps an auth token in ~/.ray: a home of this scenario's own, so that no other cluster
    # on the machine (another test run, a benchmark) shares it.
    ENV["HOME"] = str(work / "home")
    try:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        # Ray keeps its sessions and the address of the last `ray start` in /tmp/ray: here a
        # tmpfs private to this mount namespace, gone with it.
        os.makedirs("/tmp/ray", exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1g", "tmpfs", "/tmp/ray"], check=True)
        started.append(
            spawn(
                [BIN / "python", "-m", "moto.server", "-H", "127.0.0.1", "-p", str(S3_PORT)],
                work / "moto.log",
            )
        )
        node = ["--num-cpus=1", "--object-store-memory=80000000", "--block"]
        started.append(
            spawn(
                [
                    BIN / "ray",
                    "start",
                    "--head",
                    "--node-ip-address=127.0.0.1",
                    f"--port={RAY_PORT}",
                    "--include-dashboard=false",
                    "--disable-usage-stats",
                    *node,
                ],
                work / "head.log",
            )
        )
        wait_port(S3_PORT)
        wait_port(RAY_PORT)
        if not wait_nodes(1):
            raise RuntimeError("the Ray head node did not start")
        # The head answers drivers now: a node that joins earlier can be turned away.
        join = [BIN / "ray", "start", f"--address=127.0.0.1:{RAY_PORT}", *node]
        for _ in range(3):  # a loaded machine can still time a node out while it joins
            started.append(spawn(join, work / "node.log"))
            if wait_nodes(2, alive=started[-1]):
                break
        else:
            raise RuntimeError("the Ray cluster did not reach 2 nodes")
        return scenario(work)
    finally:
        for proc in reversed(started):
            stop(proc)


def scenario(work: Path) -> dict:
    import s3fs

    seen: dict = {"seconds": {}}
    clock = time.monotonic()
    world = work / "world"
    autolabel("toyworld", "generate", world, "--n", IMAGES, "--size", 64)
    fs = s3fs.S3FileSystem(endpoint_url=ENDPOINT, key="testing", secret="testing")
    fs.mkdir("bucket")
    fs.put(str(world / "images") + "/", "bucket/in/", recursive=True)
    (world / "images" / "broken.png").write_bytes(b"not a png")  # reported as failed, both ways
    fs.pipe_file("bucket/in/broken.png", b"not a png")
    reference = work / "reference"
    seen["reference_rc"] = autolabel("run", world / "images", "-o", reference).returncode
    seen["seconds"]["reference"], clock = time.monotonic() - clock, time.monotonic()

    # S3 in and out on the Ray cluster, one of the two worker processes SIGKILLed mid-run.
    out = "s3://bucket/out"
    run = launch("run", "s3://bucket/in", "-o", out, *RAY, "--storage-options", STORAGE)
    done = wait_for(lambda: len(fs.find("bucket/out/.autolabel/records")), 3, run)
    seen["records_at_kill"] = done
    seen["killed"] = kill_worker()
    seen["s3_rc"] = finish(run)
    fs.get("bucket/out/", str(work / "from-s3") + "/", recursive=True)
    seen["s3"] = compare(reference, work / "from-s3")
    seen["seconds"]["s3_ray_kill"], clock = time.monotonic() - clock, time.monotonic()
    seen["missing_bucket"] = autolabel(
        "run", "s3://bucket/in", "-o", "s3://nobucket/out", "--storage-options", STORAGE
    ).as_dict()
    no_gpu = autolabel("run", world / "images", "-o", work / "gpu", *RAY, "--gpus-per-worker", 1)
    seen["no_gpu"] = {**no_gpu.as_dict(), "written": (work / "gpu").exists()}
    unreachable = autolabel(
        "run", world / "images", "-o", work / "down", "--engine", "ray", "--ray-address",
        "127.0.0.1:1",
    )  # fmt: skip
    seen["unreachable"] = {**unreachable.as_dict(), "written": (work / "down").exists()}

    # Resume across engines: a run killed with SIGKILL on one engine, finished on the other.
    for first, second, name in ((RAY, (), "ray_then_local"), ((), RAY, "local_then_ray")):
        out_dir = work / name
        run = launch("run", world / "images", "-o", out_dir, *first)
        records = out_dir / ".autolabel" / "records.jsonl"
        count = wait_for(lambda p=records: len(p.read_bytes().splitlines()), 3, run)
        run.kill()
        run.wait()
        again = autolabel("run", world / "images", "-o", out_dir, *second)
        resumed = re.search(r"\((\d+) already done before this run\)", again.stdout)
        seen[name] = {
            "records_at_kill": count,
            "rc": again.returncode,
            "resumed": int(resumed.group(1)) if resumed else 0,
            **compare(reference, out_dir),
        }
        seen["seconds"][name], clock = time.monotonic() - clock, time.monotonic()
    return seen


RAY = ("--engine", "ray", "--ray-address", f"127.0.0.1:{RAY_PORT}", "--workers", "2")
COMMON = ("--vocab", "{world}/vocab.txt", "--model", "toy", "--method", "fast", "--batch-size", 2)


class Result(subprocess.CompletedProcess):
    def as_dict(self) -> dict:
        return {"rc": self.returncode, "stdout": self.stdout[-2000:], "stderr": self.stderr[-2000:]}


def command(*args: object) -> list[str]:
    words = [str(BIN / "autolabel"), *map(str, args)]
    if args[0] == "run":
        world = Path(sys.argv[1]) / "world"
        words += [str(w).format(world=world) for w in COMMON]
    return words


def autolabel(*args: object) -> Result:
    done = subprocess.run(command(*args), capture_output=True, text=True, env=ENV, timeout=240)
    return Result(done.args, done.returncode, done.stdout, done.stderr)


def launch(*args: object) -> subprocess.Popen:
    return subprocess.Popen(
        command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )


def finish(run: subprocess.Popen) -> dict:
    stdout, stderr = run.communicate(timeout=240)
    return {"rc": run.returncode, "stdout": stdout[-3000:], "stderr": stderr[-3000:]}


def wait_for(count: object, at_least: int, run: subprocess.Popen, timeout: float = 180) -> int:
    """Poll until count() reaches at_least while `run` is still going; return the count."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and run.poll() is None:
        try:
            value = count()
        except (OSError, FileNotFoundError):
            value = 0
        if value >= at_least:
            return value
        time.sleep(0.05)
    raise RuntimeError(f"the run ended or stalled before {at_least} records: {finish(run)}")


def kill_worker() -> dict:
    """SIGKILL one Ray actor process of the run (found by its process title in /proc)."""
    for pid in sorted(int(p) for p in os.listdir("/proc") if p.isdigit()):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if title.startswith(b"ray::Worker"):
            os.kill(pid, signal.SIGKILL)
            return {"pid": pid, "title": title.decode()}
    return {}


def compare(reference: Path, out: Path) -> dict:
    """Whether annotations.json and every mask equal the reference's, and the manifest's rows."""
    ref_masks = {p.relative_to(reference): p.read_bytes() for p in reference.rglob("masks/*")}
    masks = {p.relative_to(out): p.read_bytes() for p in out.rglob("masks/*")}
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    return {
        "annotations_equal": json.loads((reference / "annotations.json").read_text())
        == json.loads((out / "annotations.json").read_text()),
        "masks_equal": ref_masks == masks,
        "masks": len(masks),
        "manifest_files": [row["file"] for row in rows],
        "failed": [row["file"] for row in rows if row["status"] == "failed"],
    }


def spawn(cmd: list, log: Path) -> subprocess.Popen:
    handle = open(log, "wb")  # noqa: SIM115 - the child keeps it
    return subprocess.Popen([str(c) for c in cmd], stdout=handle, stderr=subprocess.STDOUT, env=ENV)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def wait_nodes(count: int, alive: subprocess.Popen | None = None, timeout: float = 90) -> bool:
    """Whether the cluster reaches `count` live nodes while `alive` (a joining node) runs."""
    script = (
        f"import ray; ray.init(address='127.0.0.1:{RAY_PORT}'); "
        "print(sum(n['Alive'] for n in ray.nodes()))"
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (alive is None or alive.poll() is None):
        out = subprocess.run(
            [str(BIN / "python"), "-c", script], capture_output=True, text=True, env=ENV
        )
        if out.stdout.strip() == str(count):
            return True
        time.sleep(1)
    return False


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))))
