"""report.html: a run at a glance, read from the run folder alone; checked in a real browser."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from autolabel import Labeler
from autolabel.cli import main
from autolabel.io import report as report_module
from autolabel.io.report import PAGE_SIZE, REPORT_NAME, write_report
from autolabel.toyworld.scenes import make_scene

CLASSES = ["red circle", "blue square", "green triangle"]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run with previews: five toy scenes, one broken file, one skipped file."""
    base = tmp_path_factory.mktemp("report")
    images = base / "images"
    (images / "sub").mkdir(parents=True)
    for i in range(5):
        folder = images / "sub" if i == 4 else images
        Image.fromarray(make_scene(3, i).image).save(folder / f"scene{i}.png")
    (images / "broken.jpg").write_bytes(b"not an image")
    (images / "notes.txt").write_text("not an image either")
    labeler = Labeler(CLASSES, method="fast", model="toy", device="cpu")
    labeler.label_folder(images, base / "out", previews=True)
    return base / "out"


@pytest.fixture
def run_copy(toy_run: Path, tmp_path: Path) -> Path:
    """A copy of the toy run this test may change (its report built afresh)."""
    out = tmp_path / "out"
    shutil.copytree(toy_run, out, ignore=shutil.ignore_patterns("report*"))
    return out


def coco_counts(out: Path) -> dict[str, int]:
    coco = json.loads((out / "annotations.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    counts = Counter(names[a["category_id"]] for a in coco["annotations"])
    return {name: counts[name] for name in names.values()}


def shown_counts(page: str) -> dict[str, int]:
    rows = re.findall(r'<tr data-class="([^"]*)">.*?<td class="num instances">(\d+)</td>', page)
    return {name: int(n) for name, n in rows}


def gallery_rows(page: str) -> list[list[Any]]:
    match = re.search(
        r'<script type="application/json" id="gallery-data">(.*?)</script>', page, re.S
    )
    assert match
    return json.loads(match.group(1))


def manifest(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def write_manifest(out: Path, rows: list[dict[str, Any]]) -> None:
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_report_shows_the_run(run_copy: Path) -> None:
    path = write_report(run_copy)
    assert path == run_copy / REPORT_NAME
    page = path.read_text(encoding="utf-8")
    assert shown_counts(page) == coco_counts(run_copy)
    assert list(shown_counts(page)) == CLASSES
    coco = json.loads((run_copy / "annotations.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    pairs = {(a["category_id"], a["image_id"]) for a in coco["annotations"]}
    with_class = Counter(names[category] for category, _ in pairs)
    cells = r'<tr data-class="([^"]*)">.*?instances">\d+</td><td class="num">(\d+)<'
    images_shown = re.findall(cells, page)
    assert {name: int(n) for name, n in images_shown} == {n: with_class[n] for n in CLASSES}
    rows = manifest(run_copy)
    for status in ("ok", "failed", "skipped"):
        count = sum(r["status"] == status for r in rows)
        assert f'data-status="{status}"><b>{count}</b>' in page
    assert "broken.jpg" in page and "notes.txt" in page
    for row in rows:
        if row["status"] != "ok":
            assert row["reason"] and json.dumps(row["reason"])[1:-1] in page
    # Settings and provenance from run.json; the plots are matplotlib's, inlined as SVG.
    info = json.loads((run_copy / "run.json").read_text())
    assert "toy-fast" in page and info["started"] in page and "package versions" in page
    assert page.count("<svg") == 2 and "Matplotlib" in page
    gallery = gallery_rows(page)
    assert sorted(g[0] for g in gallery) == sorted(r["file"] for r in rows if r["status"] == "ok")
    by_file = {r["file"]: r for r in rows}
    for file, priority, instances, thumb, preview in gallery:
        known = by_file[file].get("priority")  # absent in runs older than review priorities
        assert priority == (None if known is None else pytest.approx(known, abs=1e-4))
        assert instances == by_file[file]["instances"]
        assert preview == f"previews/{Path(file).with_suffix('').as_posix()}.jpg"
        assert (run_copy / preview).is_file()
        with Image.open(run_copy / thumb) as im:
            assert im.format == "JPEG" and max(im.size) <= report_module.THUMB_SIDE

    def key(file: str) -> tuple[bool, float, str]:
        priority = by_file[file].get("priority")
        return priority is None, -(priority or 0.0), file

    assert [g[0] for g in gallery] == sorted((g[0] for g in gallery), key=key)
    # Self-contained: nothing is fetched from the network (the SVG namespace is only a name).
    assert not re.search(r"""(src|href)=["']?(https?:)?//|url\(\s*['"]?(https?:)?//""", page)
    assert not list(run_copy.rglob("*.tmp"))


def test_gallery_sorted_by_priority_unknown_last(run_copy: Path) -> None:
    rows = manifest(run_copy)
    ok = [r for r in rows if r["status"] == "ok"]
    priorities = [0.2, None, 0.9, 0.5, None]
    for row, priority in zip(ok, priorities, strict=True):
        row.pop("priority", None)  # unknown: absent (an older run) or null
        if priority is not None:
            row["priority"] = priority
        elif row is ok[1]:
            row["priority"] = None
    write_manifest(run_copy, rows)
    coco = json.loads((run_copy / "annotations.json").read_text())
    for image in coco["images"]:
        image.pop("priority", None)  # else the image records' priorities fill the gaps
    (run_copy / "annotations.json").write_text(json.dumps(coco))
    gallery = gallery_rows(write_report(run_copy).read_text())
    assert [g[1] for g in gallery] == [0.9, 0.5, 0.2, None, None]
    expected = [ok[2], ok[3], ok[0], ok[1], ok[4]]
    assert [g[0] for g in gallery] == [r["file"] for r in expected]


def test_priority_from_coco_images_when_the_manifest_has_none(run_copy: Path) -> None:
    rows = manifest(run_copy)
    for row in rows:
        row.pop("priority", None)
    write_manifest(run_copy, rows)
    coco = json.loads((run_copy / "annotations.json").read_text())
    for i, image in enumerate(coco["images"]):
        image["priority"] = i / 10
    (run_copy / "annotations.json").write_text(json.dumps(coco))  # another layout: parsed whole
    gallery = gallery_rows(write_report(run_copy).read_text())
    files = [image["file_name"] for image in reversed(coco["images"])]
    assert [g[0] for g in gallery] == files
    assert gallery[0][1] == pytest.approx((len(files) - 1) / 10)


def test_run_without_previews_shows_mask_thumbnails(run_copy: Path) -> None:
    shutil.rmtree(run_copy / "previews")
    page = write_report(run_copy).read_text()
    assert "Previews were not written" in page
    gallery = gallery_rows(page)
    assert all(g[4] is None and g[3] for g in gallery)
    assert all((run_copy / g[3]).is_file() for g in gallery)


def test_thumbnails_are_reused_and_orphans_removed(run_copy: Path) -> None:
    write_report(run_copy)
    thumbs = sorted((run_copy / "report").rglob("*.jpg"))
    stamps = [p.stat().st_mtime_ns for p in thumbs]
    orphan = run_copy / "report" / "thumbs" / "gone.jpg"
    orphan.write_bytes(b"old")
    write_report(run_copy)
    assert [p.stat().st_mtime_ns for p in thumbs] == stamps
    assert not orphan.exists()


def test_report_is_written_atomically(run_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = write_report(run_copy).read_bytes()

    def broken(stats: Any) -> str:
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(report_module, "_class_plots", broken)
    with pytest.raises(RuntimeError):
        write_report(run_copy)
    assert (run_copy / REPORT_NAME).read_bytes() == before
    assert not list(run_copy.glob(".*.tmp"))


def test_cli_rebuilds_the_report(run_copy: Path, tmp_path: Path) -> None:
    assert main(["report", str(run_copy)]) == 0
    assert (run_copy / REPORT_NAME).is_file()
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    (run_copy / "manifest.jsonl").write_text("{not json\n")
    assert main(["report", str(run_copy)]) == 2


def synthetic_run(out: Path, n: int) -> dict[str, int]:
    """run.json, annotations.json (the runner's layout) and manifest.jsonl for n images, without
    masks or previews; returns the instances per class."""
    out.mkdir(parents=True)
    info = {
        "method": "fast",
        "recipe": "toy-fast",
        "images_root": "/data/images",
        "vocabulary": {"classes": [{"name": c, "synonyms": []} for c in CLASSES]},
    }
    (out / "run.json").write_text(json.dumps(info))
    counts: Counter = Counter()
    with open(out / "manifest.jsonl", "w") as rows, open(out / "annotations.json", "w") as coco:
        categories = [
            {"id": i + 1, "name": c, "supercategory": "object"} for i, c in enumerate(CLASSES)
        ]
        coco.write(f'{{\n"info": {{}},\n"licenses": [],\n"categories": {json.dumps(categories)},\n')
        images, anns = [], []
        for i in range(n):
            file = f"folder{i % 7}/image_{i:05d}.jpg"
            status = "failed" if i % 97 == 0 else "skipped" if i % 89 == 0 else "ok"
            reason = "" if status == "ok" else f"bad {i % 3}"
            row = {"file": file, "status": status, "reason": reason, "seconds": 0.5,
                   "instances": 0, "mask": None}  # fmt: skip
            if status == "ok":
                row["mask"] = f"masks/{file[:-4]}.png"
                image_id = len(images) + 1
                images.append({"id": image_id, "file_name": file, "width": 640, "height": 480})
                for k in range(i % 4):
                    cat = (i + k) % len(CLASSES) + 1
                    counts[CLASSES[cat - 1]] += 1
                    anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat,
                                 "area": 1000.0, "score": (i % 100) / 100})  # fmt: skip
                row["instances"] = i % 4
                if i % 5:
                    row["priority"] = (i * 7919 % 1000) / 1000
            rows.write(json.dumps(row) + "\n")
        coco.write('"images": [\n' + ",\n".join(json.dumps(x) for x in images) + "\n],\n")
        coco.write('"annotations": [\n' + ",\n".join(json.dumps(x) for x in anns) + "\n]\n}\n")
    return {c: counts[c] for c in CLASSES}


def test_report_of_10000_images_stays_small(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(report_module, "LIST_LIMIT", 50)
    out = tmp_path / "big"
    counts = synthetic_run(out, 10_000)
    started = time.perf_counter()
    page = write_report(out).read_text()
    assert time.perf_counter() - started < 60
    assert (out / REPORT_NAME).stat().st_size < 5_000_000
    assert shown_counts(page) == counts
    gallery = gallery_rows(page)
    ok = [r for r in manifest(out) if r["status"] == "ok"]
    assert len(gallery) == len(ok)
    known = [g[1] for g in gallery if g[1] is not None]
    assert known == sorted(known, reverse=True)
    assert all(g[1] is None for g in gallery[len(known) :])
    assert len(known) == sum("priority" in r for r in ok) > 0
    assert 'data-status="failed"><b>104</b>' in page
    assert "and 54 more: see manifest.jsonl" in page  # long lists are cut


# --- in a real browser -----------------------------------------------------------------------


class Browser:
    """Headless Chromium driven over the DevTools protocol on 127.0.0.1."""

    def __init__(self, profile: Path) -> None:
        import websocket

        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        assert exe
        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             f"--user-data-dir={profile}", "--hide-scrollbars", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            port_file = profile / "DevToolsActivePort"
            deadline = time.monotonic() + 60
            while not (port_file.exists() and port_file.read_text().strip()):
                assert self.proc.poll() is None, "chromium exited"
                assert time.monotonic() < deadline, "chromium did not start"
                time.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                targets = json.load(r)
            url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
            self.ws = websocket.create_connection(url, timeout=30, suppress_origin=True)
        except BaseException:
            self.close()
            raise
        self.ids = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        self.ids += 1
        self.ws.send(json.dumps({"id": self.ids, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.ids:
                assert "error" not in message, message
                return message["result"]
            self.events.append(message)

    def wait_for(self, event: str) -> None:
        while not any(e.get("method") == event for e in self.events):
            self.events.append(json.loads(self.ws.recv()))

    def evaluate(self, expression: str) -> Any:
        result = self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def errors(self) -> list[Any]:
        """Uncaught exceptions, console errors and failed loads (a missing thumbnail)."""
        found = []
        for e in self.events:
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(params["exceptionDetails"])
            elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                found.append(params)
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(params["entry"])
        return found

    def open(self, path: Path) -> None:
        self.events.clear()
        self.send("Page.navigate", url=path.resolve().as_uri())
        self.wait_for("Page.loadEventFired")
        self.evaluate("new Promise(r => setTimeout(r, 300))")

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(data["data"]))

    def close(self) -> None:
        if hasattr(self, "ws"):
            self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def browser(tmp_path: Path) -> Any:
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("chromium is required in CI (.ci/run installs it)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    pytest.importorskip("websocket", reason="websocket-client is a test extra")
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    b = Browser(profile)
    try:
        b.send("Page.enable")
        b.send("Runtime.enable")
        b.send("Log.enable")
        b.send("Emulation.setDeviceMetricsOverride", width=1280, height=1800,
               deviceScaleFactor=1, mobile=False)  # fmt: skip
        yield b
    finally:
        b.close()


def artefacts(tmp_path: Path) -> Path:
    """Where screenshots are kept: $AUTOLABEL_TEST_ARTEFACTS, else the test's tmp folder."""
    folder = Path(os.environ.get("AUTOLABEL_TEST_ARTEFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


COUNTS_JS = """JSON.stringify(Object.fromEntries([...document.querySelectorAll("tr[data-class]")]
  .map(tr => [tr.dataset.class, Number(tr.querySelector(".instances").textContent)])))"""
# The thumbnails load lazily: bring the gallery into view, then wait for them (5 s at most).
LOAD_THUMBNAILS_JS = """document.getElementById("gallery").scrollIntoView();
new Promise(done => { const t0 = Date.now(); (function poll() {
  const imgs = [...document.querySelectorAll("#gallery img")];
  if (imgs.every(i => i.complete) || Date.now() - t0 > 5000) { window.scrollTo(0, 0); done(); }
  else { setTimeout(poll, 50); } })(); })"""
GALLERY_JS = """JSON.stringify({ready: document.body.dataset.ready, errors: window.__errors || [],
  items: [...document.querySelectorAll("#gallery figure")].map(f => f.dataset.file),
  links: [...document.querySelectorAll("#gallery a")].map(a => a.getAttribute("href")),
  broken: [...document.querySelectorAll("#gallery img")]
    .filter(i => i.complete && i.naturalWidth === 0).map(i => i.src),
  loaded: [...document.querySelectorAll("#gallery img")].filter(i => i.naturalWidth > 0).length,
  page: document.getElementById("page-info").textContent,
  svgs: document.querySelectorAll("figure.plot svg").length})"""


@pytest.mark.integration
def test_report_renders_in_chromium(toy_run: Path, browser: Browser, tmp_path: Path) -> None:
    path = write_report(toy_run)
    browser.open(path)
    browser.evaluate(LOAD_THUMBNAILS_JS)
    state = json.loads(browser.evaluate(GALLERY_JS))
    browser.screenshot(artefacts(tmp_path) / "report.png")
    assert browser.errors() == []
    assert state["ready"] == "1" and state["svgs"] == 2
    assert json.loads(browser.evaluate(COUNTS_JS)) == coco_counts(toy_run)
    ok = [r["file"] for r in manifest(toy_run) if r["status"] == "ok"]
    order = [g[0] for g in gallery_rows(path.read_text())]  # by priority
    assert state["items"] == order and sorted(order) == ok and state["broken"] == []
    assert state["loaded"] == len(ok)  # every thumbnail is on disk where the page looks
    assert all((toy_run / link).is_file() for link in state["links"]) and state["links"]
    assert state["page"] == f"page 1 of 1 ({len(ok)} images)"


@pytest.mark.integration
def test_10000_image_report_pages_in_chromium(tmp_path: Path, browser: Browser) -> None:
    out = tmp_path / "big"
    counts = synthetic_run(out, 10_000)
    browser.open(write_report(out))
    assert browser.errors() == []
    state = json.loads(browser.evaluate(GALLERY_JS))
    assert json.loads(browser.evaluate(COUNTS_JS)) == counts
    pages = -(-len(gallery_rows((out / REPORT_NAME).read_text())) // PAGE_SIZE)
    assert len(state["items"]) == PAGE_SIZE and state["page"].startswith(f"page 1 of {pages} ")
    browser.evaluate('document.getElementById("next").click()')
    second = json.loads(browser.evaluate(GALLERY_JS))
    assert second["page"].startswith("page 2 of") and set(second["items"]).isdisjoint(
        state["items"]
    )
    browser.evaluate(
        'var f = document.getElementById("filter"); f.value = "image_00042";'
        'f.dispatchEvent(new Event("input"))'
    )
    assert json.loads(browser.evaluate(GALLERY_JS))["items"] == ["folder0/image_00042.jpg"]
    browser.screenshot(artefacts(tmp_path) / "report-10000.png")
    assert browser.errors() == []


@pytest.mark.integration
def test_the_browser_check_sees_errors(tmp_path: Path, browser: Browser) -> None:
    """The checks above would notice a script error or a thumbnail that is not there."""
    page = tmp_path / "broken.html"
    page.write_text('<script>undefinedFunction();</script><img src="missing.jpg">')
    browser.open(page)
    assert len(browser.errors()) >= 2
