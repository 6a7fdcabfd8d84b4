"""report.html: a run at a glance, built from its run folder alone (run.json, manifest.jsonl,
annotations.json, masks/, previews/), streamed and written atomically.

One self-contained HTML file that opens from disk with no network: the run's settings and
provenance, images ok / failed / skipped with their reasons, instances and pixel share per
class, score histograms per class (matplotlib, inlined as SVG), and a paged gallery of overlay
thumbnails sorted by review priority. The thumbnails are small JPEGs in `report/thumbs/`, next
to the file, loaded lazily one page at a time; the page holds only a row of text per image, so
its size stays bounded (about 1.5 MB at 10,000 images).
"""

from __future__ import annotations

import html
import io
import json
import math
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from autolabel.errors import UsageError
from autolabel.io.atomic import atomic_open, atomic_write_bytes
from autolabel.io.coco import read_coco
from autolabel.io.run_folder import preview_name, read_run_info

REPORT_NAME = "report.html"
REPORT_DIR = "report"  # side folder: report/thumbs/<rel>.jpg
THUMB_SIDE = 256  # px, the longer side of a gallery thumbnail
THUMB_QUALITY = 72
PAGE_SIZE = 48  # gallery thumbnails per page
LIST_LIMIT = 200  # failed / skipped files listed by name (all are in manifest.jsonl)
REASON_LIMIT = 50  # distinct reasons listed per status
HIST_BINS = 20  # score histogram bins over [0, 1]
SVG_CLASS_LIMIT = 40  # more classes than this: plots inlined as PNG, which stays smaller
STATUSES = ("ok", "failed", "skipped")


@dataclass
class ClassStats:
    """One class's totals over the run's annotations."""

    name: str
    instances: int = 0
    area: float = 0.0
    images: int = 0  # images with at least one instance of the class
    last_image: Any = None
    score_sum: float = 0.0
    scored: int = 0
    hist: list[int] = field(default_factory=lambda: [0] * HIST_BINS)

    def add(self, ann: dict[str, Any], image_id: Any) -> None:
        self.instances += 1
        self.area += _number(ann.get("area")) or _rle_area(ann)
        if image_id != self.last_image:  # annotations come grouped by image (_coco_items)
            self.images += 1
            self.last_image = image_id
        score = _number(ann.get("score"))
        if score is not None:
            self.score_sum += score
            self.scored += 1
            self.hist[min(max(int(score * HIST_BINS), 0), HIST_BINS - 1)] += 1


@dataclass
class RunStats:
    """Everything the report shows, gathered by streaming the run folder."""

    classes: list[ClassStats]
    category_ids: list[int]
    pixels: int = 0  # summed width x height of the labelled images
    coco_images: int = 0
    priorities: dict[str, float] = field(default_factory=dict)  # COCO image records' priority
    counts: Counter = field(default_factory=Counter)  # manifest status -> rows
    reasons: dict[str, Counter] = field(default_factory=dict)  # status -> reason -> rows
    listed: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # status -> files
    notes: int = 0  # ok images labelled with a caveat
    seconds: float = 0.0
    gallery: list[tuple[float | None, str, int, str | None]] = field(default_factory=list)


def write_report(out: Path) -> Path:
    """Build `out/report.html` (and its thumbnails in `out/report/`) from the run folder.

    Reads only the run folder; returns the report's path. Problems with the folder's files are
    UsageErrors naming them. Thumbnails that are already up to date are kept, so rebuilding the
    report of a large run is quick; those of images no longer in the run are removed.
    """
    out = Path(out)
    info, _ = read_run_info(out)
    stats = _read_annotations(out / "annotations.json")
    _read_manifest(out / "manifest.jsonl", stats)
    stats.gallery.sort(key=lambda g: (g[0] is None, -(g[0] or 0.0), g[1]))
    has_previews = (out / "previews").is_dir()
    rows = _make_thumbnails(out, stats.gallery, has_previews)
    path = out / REPORT_NAME
    with atomic_open(path, "w") as handle:
        _write_html(handle, out, info, stats, rows, has_previews)
    return path


# --- reading the run folder --------------------------------------------------------------


def _number(value: Any) -> float | None:
    """A finite number, or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _rle_area(ann: dict[str, Any]) -> float:
    """The area of an annotation without an "area" field, from its RLE."""
    seg = ann.get("segmentation")
    if not isinstance(seg, dict) or "counts" not in seg:
        return 0.0
    from pycocotools import mask as mask_utils

    rle = dict(seg)
    if isinstance(rle["counts"], str):
        rle["counts"] = rle["counts"].encode("ascii")
    return float(mask_utils.area(rle))


def _open_run_file(path: Path) -> Any:
    """A text file of the run folder, open; UsageError naming it when missing or unreadable."""
    try:
        return open(path, encoding="utf-8")  # noqa: SIM115 (the caller closes it)
    except FileNotFoundError as exc:
        raise UsageError(f"{path}: missing; is {path.parent} the output folder of a run?") from exc
    except OSError as exc:
        raise UsageError(f"{path}: cannot read it ({exc})") from exc


def _coco_items(path: Path) -> Iterator[tuple[str, Any]]:
    """("categories", list), then ("image", dict)... and ("annotation", dict)... of a COCO file.

    annotations.json as `autolabel run` writes it (one item per line) is read a line at a
    time, so memory does not grow with the run; any other layout is parsed whole.
    """
    handle = _open_run_file(path)
    with handle:
        first, second = handle.readline(), handle.readline()
        if first != "{\n" or not second.startswith('"info": '):
            coco = read_coco(path)
            yield "categories", coco.categories
            yield from (("image", image) for image in coco.images)
            for anns in coco.annotations.values():
                yield from (("annotation", ann) for ann in anns)
            return
        section = None
        for number, line in enumerate(handle, 3):
            text = line.strip()
            try:
                if section is None:
                    if text.startswith('"categories": '):
                        yield "categories", json.loads(text[len('"categories": ') :].rstrip(","))
                    elif text.startswith('"images": ['):
                        section = "image"
                    elif text.startswith('"annotations": ['):
                        section = "annotation"
                elif text.startswith("]"):
                    section = None
                elif text:
                    yield section, json.loads(text.rstrip(","))
            except ValueError as exc:
                raise UsageError(f"{path}: line {number} is not JSON ({exc})") from exc


def _read_annotations(path: Path) -> RunStats:
    stats: RunStats | None = None
    by_id: dict[int, ClassStats] = {}
    for kind, item in _coco_items(path):
        if kind == "categories":
            ordered = sorted(item, key=lambda c: c["id"])
            names, ids = [str(c["name"]) for c in ordered], [c["id"] for c in ordered]
            stats = RunStats([ClassStats(name) for name in names], ids)
            by_id = dict(zip(ids, stats.classes, strict=True))
            continue
        if stats is None:
            raise UsageError(f"{path}: no categories before the images")
        if kind == "image":
            stats.coco_images += 1
            stats.pixels += int(item.get("width", 0)) * int(item.get("height", 0))
            priority = _number(item.get("priority"))
            if priority is not None:
                stats.priorities[str(item.get("file_name"))] = priority
        elif item.get("category_id") in by_id:
            by_id[item["category_id"]].add(item, item.get("image_id"))
    if stats is None:
        raise UsageError(f"{path}: not a COCO annotation file (no categories)")
    return stats


def _read_manifest(path: Path, stats: RunStats) -> None:
    handle = _open_run_file(path)
    with handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                status, file = str(row["status"]), str(row["file"])
            except (ValueError, KeyError, TypeError) as exc:
                raise UsageError(f"{path}: line {number} is not a manifest row ({exc})") from exc
            reason = str(row.get("reason") or "")
            stats.counts[status] += 1
            stats.seconds += _number(row.get("seconds")) or 0.0
            if status == "ok":
                stats.notes += bool(reason)
                priority = _number(row.get("priority"))
                if priority is None:
                    priority = stats.priorities.get(file)
                mask = row.get("mask") if isinstance(row.get("mask"), str) else None
                instances = int(_number(row.get("instances")) or 0)
                stats.gallery.append((priority, file, instances, mask))
                continue
            stats.reasons.setdefault(status, Counter())[reason or "(no reason given)"] += 1
            listed = stats.listed.setdefault(status, [])
            if len(listed) < LIST_LIMIT:
                listed.append((file, reason))


# --- thumbnails ----------------------------------------------------------------------------


def _make_thumbnails(
    out: Path, gallery: list[tuple[float | None, str, int, str | None]], has_previews: bool
) -> Iterator[list[Any]]:
    """Write missing or stale thumbnails, remove orphaned ones; return the gallery's rows.

    A thumbnail is made from the image's preview or, in a run without previews, from its mask
    (the classes' colours on black). Rows: [file, priority, instances, thumb, preview].
    """
    thumbs = out / REPORT_DIR / "thumbs"
    live: set[str] = set()
    rows = []
    for priority, file, instances, mask in gallery:
        thumb = preview = None
        if mask and mask.startswith("masks/") and mask.endswith(".png"):
            key = mask[len("masks/") : -len(".png")]
            candidate = preview_name(mask)
            source = out / candidate if has_previews else out / mask
            if has_previews and source.is_file():
                preview = candidate
            target = thumbs / f"{key}.jpg"
            if _thumbnail(source, target):
                thumb = target.relative_to(out).as_posix()
                live.add(thumb)
        p = None if priority is None else round(priority, 4)
        rows.append([file, p, instances, thumb, preview])
    _remove_orphans(out, thumbs, live)
    return iter(rows)


def _thumbnail(source: Path, target: Path) -> bool:
    """Make `target` from `source` unless it is newer already; False when there is no source."""
    try:
        mtime = source.stat().st_mtime_ns
    except OSError:
        return False
    try:
        if target.stat().st_mtime_ns >= mtime:
            return True
    except OSError:
        pass
    from PIL import Image

    try:
        with Image.open(source) as im:
            im.draft("RGB", (THUMB_SIDE, THUMB_SIDE))  # JPEG: decode at a reduced scale
            im.thumbnail((THUMB_SIDE, THUMB_SIDE))
            rgb = im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        return False
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=THUMB_QUALITY, optimize=True)
    atomic_write_bytes(target, buffer.getvalue())
    return True


def _remove_orphans(out: Path, thumbs: Path, live: set[str]) -> None:
    """Thumbnails of images no longer in the run, and temp files a killed write left behind."""
    for parent, _, files in os.walk(thumbs):
        for name in files:
            path = Path(parent) / name
            if path.relative_to(out).as_posix() not in live:
                path.unlink(missing_ok=True)


# --- plots -------------------------------------------------------------------------------


def _colour(category_id: int) -> str:
    from autolabel.io.png import class_colour

    return "#{:02x}{:02x}{:02x}".format(*class_colour(category_id))


def _figure_html(fig: Any, alt: str, svg: bool) -> str:
    """A matplotlib figure as inline SVG (text stays text), or as an inline PNG."""
    import matplotlib

    buffer = io.BytesIO()
    if svg:
        with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "autolabel"}):
            fig.savefig(buffer, format="svg", metadata={"Date": None})
        text = buffer.getvalue().decode("utf-8")
        text = text[text.index("<svg") :]  # drop the XML declaration and DOCTYPE
        return f'<figure class="plot" role="img" aria-label="{html.escape(alt)}">{text}</figure>'
    import base64

    fig.savefig(buffer, format="png", dpi=80, metadata={"Software": None})
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    image = f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
    return f'<figure class="plot">{image}</figure>'


def _class_plots(stats: RunStats) -> str:
    """Instances and pixel share per class, then one score histogram per class."""
    from matplotlib.figure import Figure

    classes = stats.classes
    if not classes:
        return ""
    svg = len(classes) <= SVG_CLASS_LIMIT
    colours = [_colour(cid) for cid in stats.category_ids]
    names = [c.name for c in classes]
    height = 0.9 + 0.28 * len(classes)
    fig = Figure(figsize=(10, height))
    # Margins set by hand (inches): a layout engine would double the time spent drawing.
    names_in = min(3.5, 0.25 + 0.075 * max(len(n) for n in names))
    fig.subplots_adjust(
        left=names_in / 10, right=0.98, top=1 - 0.15 / height, bottom=0.6 / height, wspace=0.08
    )
    left, right = fig.subplots(1, 2, sharey=True)
    ys = list(range(len(classes)))
    left.barh(ys, [c.instances for c in classes], color=colours, edgecolor="#555", linewidth=0.5)
    left.set_yticks(ys, names)
    left.invert_yaxis()
    left.set_xlabel("instances")
    share = [100.0 * c.area / stats.pixels if stats.pixels else 0.0 for c in classes]
    right.barh(ys, share, color=colours, edgecolor="#555", linewidth=0.5)
    right.set_xlabel("share of labelled pixels (%)")
    for ax in (left, right):
        ax.grid(axis="x", alpha=0.3)
        ax.set_axisbelow(True)
    parts = [_figure_html(fig, "instances and pixel share per class", svg)]

    cols = min(4, len(classes))
    rows = math.ceil(len(classes) / cols)
    fig = Figure(figsize=(2.6 * cols, 1.9 * rows))
    fig.subplots_adjust(
        left=0.35 / (2.6 * cols),
        right=1 - 0.1 / (2.6 * cols),
        top=1 - 0.3 / (1.9 * rows),
        bottom=0.45 / (1.9 * rows),
        wspace=0.3,
        hspace=0.55,
    )
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True)
    edges = [i / HIST_BINS for i in range(HIST_BINS + 1)]
    for index, ax in enumerate(axes.flat):
        if index >= len(classes):
            ax.set_visible(False)
            continue
        cls = classes[index]
        ax.stairs(cls.hist, edges, fill=True, color=colours[index], alpha=0.85)
        ax.stairs(cls.hist, edges, color="#333", linewidth=0.6)
        ax.set_title(f"{cls.name} ({cls.scored})", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, max(cls.hist) * 1.08 or 1)
        ax.yaxis.get_major_locator().set_params(integer=True)
        if not cls.scored:
            ax.text(0.5, 0.5, "no instances", ha="center", va="center", color="#6b7480")
        ax.tick_params(labelsize=7)
        if index // cols == rows - 1 or index + cols >= len(classes):
            ax.set_xlabel("score", fontsize=8)
    parts.append(_figure_html(fig, "score histograms per class", svg))
    return "\n".join(parts)


# --- HTML ------------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d232b;
background:#f5f6f8}
header{background:#1d232b;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header p{margin:2px 0 0;color:#b9c1cc}main{padding:8px 24px 40px;max-width:1400px}
section{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:12px 18px;
margin:14px 0}h2{font-size:16px;margin:4px 0 10px}
table{border-collapse:collapse}td,th{padding:3px 10px;border-bottom:1px solid #eceef1;
text-align:left;vertical-align:top}th{font-weight:600;background:#f7f8fa}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;gap:12px;flex-wrap:wrap}.card{border:1px solid #dde1e6;border-radius:6px;
padding:8px 16px;min-width:110px}.card b{display:block;font-size:22px}
.card.failed b{color:#c0392b}.card.skipped b{color:#8a6d00}.card.ok b{color:#1e7b34}
.swatch{display:inline-block;width:12px;height:12px;border:1px solid #555;margin-right:6px;
vertical-align:-1px}pre{background:#f7f8fa;padding:10px;overflow:auto;max-height:480px}
figure.plot{margin:8px 0}figure.plot svg,figure.plot img{max-width:100%;height:auto}
.muted{color:#6b7480}.file{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;
word-break:break-all}
#gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:10px}
#gallery figure{margin:0;background:#f7f8fa;border:1px solid #dde1e6;border-radius:4px;
padding:4px}#gallery img{width:100%;height:170px;object-fit:contain;background:#222;
display:block}#gallery .none{height:170px;display:flex;align-items:center;
justify-content:center;background:#e4e7eb;color:#6b7480}
#gallery figcaption{font-size:12px;padding:3px 2px}.pager{margin:8px 0;display:flex;gap:8px;
align-items:center;flex-wrap:wrap}.pager button{padding:3px 10px}
"""

_JS = """
(function () {
  "use strict";
  var rows = JSON.parse(document.getElementById("gallery-data").textContent);
  var size = %(page)d, page = 0, shown = rows;
  var grid = document.getElementById("gallery"), info = document.getElementById("page-info");
  var filter = document.getElementById("filter");
  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    for (var key in attrs) { node.setAttribute(key, attrs[key]); }
    if (text !== undefined) { node.textContent = text; }
    return node;
  }
  function pages() { return Math.max(1, Math.ceil(shown.length / size)); }
  function render() {
    page = Math.min(Math.max(page, 0), pages() - 1);
    grid.textContent = "";
    shown.slice(page * size, (page + 1) * size).forEach(function (r) {
      var fig = el("figure", {"class": "item", "data-file": r[0]});
      var thumb = r[3] ? el("img", {src: r[3], alt: r[0], loading: "lazy"})
                       : el("div", {"class": "none"}, "no thumbnail");
      if (r[4]) {
        var link = el("a", {href: r[4], title: "full-size preview"});
        link.appendChild(thumb); fig.appendChild(link);
      } else { fig.appendChild(thumb); }
      var cap = el("figcaption");
      cap.appendChild(el("div", {"class": "file"}, r[0]));
      var prio = r[1] === null ? "priority unknown" : "priority " + r[1].toFixed(3);
      var count = r[2] + (r[2] === 1 ? " instance" : " instances");
      cap.appendChild(el("div", {"class": "muted"}, prio + " \\u00b7 " + count));
      fig.appendChild(cap);
      grid.appendChild(fig);
    });
    info.textContent = "page " + (page + 1) + " of " + pages() + " (" + shown.length +
      " images)";
    document.getElementById("prev").disabled = page === 0;
    document.getElementById("next").disabled = page >= pages() - 1;
  }
  document.getElementById("prev").onclick = function () { page -= 1; render(); };
  document.getElementById("next").onclick = function () { page += 1; render(); };
  filter.oninput = function () {
    var q = filter.value.toLowerCase();
    shown = q ? rows.filter(function (r) { return r[0].toLowerCase().indexOf(q) >= 0; }) : rows;
    page = 0; render();
  };
  render();
  document.body.setAttribute("data-ready", "1");
})();
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _json_script(value: Any) -> str:
    """JSON safe to place inside a <script> element."""
    text = json.dumps(value, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _write_html(
    out: IO[str],
    folder: Path,
    info: dict[str, Any],
    stats: RunStats,
    rows: Iterator[list[Any]],
    has_previews: bool,
) -> None:
    title = f"autolabel run: {folder.resolve().name}"
    out.write(
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<header><h1>{_e(title)}</h1><p>{_e(_headline(info))}</p></header>\n<main>\n"
    )
    _write_images(out, stats)
    _write_classes(out, stats)
    _write_gallery(out, stats, rows, has_previews)
    _write_settings(out, info)
    out.write(f"</main>\n<script>{_JS % {'page': PAGE_SIZE}}</script>\n</body>\n</html>\n")


def _headline(info: dict[str, Any]) -> str:
    method = info.get("method", "?")
    recipe = info.get("recipe")
    parts = [f"method {method}" + (f" (recipe {recipe})" if recipe else "")]
    parts.append(f"autolabel {info.get('autolabel_version', '?')}")
    if info.get("started"):
        parts.append(f"started {info['started']}")
    parts.append(f"images from {info.get('images_root', '?')}")
    return " · ".join(parts)


def _write_images(out: IO[str], stats: RunStats) -> None:
    out.write('<section id="images"><h2>Images</h2><div class="cards">\n')
    for status in STATUSES:
        out.write(
            f'<div class="card {status}" data-status="{status}"><b>{stats.counts[status]}</b>'
            f"{status}</div>\n"
        )
    total = sum(stats.counts.values())
    out.write(
        f'<div class="card"><b>{total}</b>files</div>'
        f'<div class="card"><b>{stats.notes}</b>ok with a note</div>'
        f'<div class="card"><b>{stats.seconds:.1f} s</b>labelling time</div></div>\n'
    )
    for status in ("failed", "skipped"):
        reasons = stats.reasons.get(status)
        if not reasons:
            continue
        count = stats.counts[status]
        out.write(f"<h3>{status.capitalize()} ({count})</h3>\n<table><tr><th>reason</th>")
        out.write('<th class="num">files</th></tr>\n')
        for reason, n in reasons.most_common(REASON_LIMIT):
            out.write(f'<tr><td>{_e(reason)}</td><td class="num">{n}</td></tr>\n')
        if len(reasons) > REASON_LIMIT:
            out.write(f'<tr><td class="muted">{len(reasons) - REASON_LIMIT} more reasons</td>')
            out.write("<td></td></tr>\n")
        out.write(f"</table>\n<details><summary>the {status} files</summary><table>\n")
        for file, reason in stats.listed[status]:
            out.write(f'<tr><td class="file">{_e(file)}</td><td>{_e(reason)}</td></tr>\n')
        out.write("</table>\n")
        if count > len(stats.listed[status]):
            more = count - len(stats.listed[status])
            out.write(f'<p class="muted">and {more} more: see manifest.jsonl</p>\n')
        out.write("</details>\n")
    out.write("</section>\n")


def _write_classes(out: IO[str], stats: RunStats) -> None:
    total = sum(c.instances for c in stats.classes)
    out.write(
        '<section id="classes"><h2>Classes</h2>\n<table id="class-table"><tr><th>class</th>'
        '<th class="num">instances</th><th class="num">images</th>'
        '<th class="num">pixel share</th><th class="num">mean score</th></tr>\n'
    )
    for cid, cls in zip(stats.category_ids, stats.classes, strict=True):
        share = 100.0 * cls.area / stats.pixels if stats.pixels else 0.0
        mean = f"{cls.score_sum / cls.scored:.3f}" if cls.scored else "–"
        out.write(
            f'<tr data-class="{_e(cls.name)}"><td><span class="swatch" '
            f'style="background:{_colour(cid)}"></span>{_e(cls.name)}</td>'
            f'<td class="num instances">{cls.instances}</td>'
            f'<td class="num">{cls.images}</td><td class="num">{share:.2f} %</td>'
            f'<td class="num">{mean}</td></tr>\n'
        )
    out.write(
        f'<tr><th>all classes</th><th class="num" id="total-instances">{total}</th>'
        f'<th class="num">{stats.coco_images}</th><th></th><th></th></tr></table>\n'
    )
    out.write(
        '<p class="muted">Pixel share: the classes\' instance pixels over all pixels of the '
        "labelled images. Score: the class's mean probability inside an instance.</p>\n"
    )
    out.write(_class_plots(stats))
    out.write("</section>\n")


def _write_gallery(
    out: IO[str], stats: RunStats, rows: Iterator[list[Any]], has_previews: bool
) -> None:
    out.write('<section id="gallery-section"><h2>Gallery</h2>\n<p class="muted">')
    out.write(
        "Sorted by review priority, highest first (unknown priority last). "
        + (
            "Click a thumbnail for its full-size preview."
            if has_previews
            else "Previews were not written (run with --previews): the thumbnails show masks."
        )
    )
    out.write(
        '</p>\n<div class="pager"><button id="prev" type="button">&larr; previous</button>'
        '<button id="next" type="button">next &rarr;</button><span id="page-info"></span>'
        '<input id="filter" type="search" placeholder="filter by file name"></div>\n'
        '<div id="gallery"></div>\n'
        "<noscript><p>The gallery needs JavaScript; the images are listed in manifest.jsonl."
        "</p></noscript>\n"
        '<script type="application/json" id="gallery-data">[\n'
    )
    for i, row in enumerate(rows):
        out.write(("" if i == 0 else ",\n") + _json_script(row))
    out.write("\n]</script>\n</section>\n")


def _write_settings(out: IO[str], info: dict[str, Any]) -> None:
    out.write('<section id="settings"><h2>Settings and provenance</h2>\n<table>\n')
    config = info.get("config") if isinstance(info.get("config"), dict) else {}
    vocabulary = info.get("vocabulary") if isinstance(info.get("vocabulary"), dict) else {}
    classes = vocabulary.get("classes")
    names = [c.get("name", c) if isinstance(c, dict) else c for c in classes or []]
    items = [
        ("method", info.get("method")),
        ("recipe", info.get("recipe")),
        ("classes", ", ".join(map(str, names)) if names else None),
        ("images", info.get("images_root")),
        ("started", info.get("started")),
        ("autolabel", info.get("autolabel_version")),
        ("device", config.get("device")),
        ("max side", config.get("max_side")),
        ("min area", config.get("min_area")),
    ]
    for key, value in items:
        if value not in (None, ""):
            out.write(f"<tr><th>{_e(key)}</th><td>{_e(value)}</td></tr>\n")
    out.write("</table>\n")
    for key, label in (
        ("settings", "method settings"),
        ("models", "models and weight sources"),
        ("versions", "package versions"),
    ):
        if info.get(key):
            text = json.dumps(info[key], indent=2, ensure_ascii=False)
            out.write(f"<details><summary>{label}</summary><pre>{_e(text)}</pre></details>\n")
    text = json.dumps(info, indent=2, ensure_ascii=False)
    out.write(f"<details><summary>run.json</summary><pre>{_e(text)}</pre></details>\n</section>\n")
