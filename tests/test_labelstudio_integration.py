"""Push, pull and the ML backend against a real Label Studio server on loopback."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
import pytest
from label_studio_sdk import LabelStudio

from autolabel.api import Labeler
from autolabel.cli import main
from autolabel.instances import decode_rle
from autolabel.io.run_folder import read_run
from autolabel.sinks.labelstudio.backend.app import BackendServer
from autolabel.sinks.labelstudio.backend.media import MediaResolver
from autolabel.sinks.labelstudio.backend.predictor import SERVE_VOCABULARY, Predictor
from autolabel.sinks.labelstudio.config import make_label_config
from autolabel.sinks.labelstudio.push import ImageUrls, push_run, run_model_version
from autolabel.sinks.labelstudio.regions import region_mask
from autolabel.vocab import load_vocabulary

if TYPE_CHECKING:
    from labelstudio_server import LabelStudioServer

pytest_plugins = ["labelstudio_server"]
pytestmark = pytest.mark.integration


def _client(ls: LabelStudioServer) -> LabelStudio:
    return LabelStudio(base_url=ls.url, api_key=ls.api_key)


def _project_id(client: LabelStudio, title: str) -> int:
    (project,) = [p for p in client.projects.list(title=title) if p.title == title]
    return int(project.id)


def _tasks(client: LabelStudio, project_id: int) -> list[dict]:
    return [t.model_dump() for t in client.tasks.list(project=project_id, fields="all")]


def _file(task: dict) -> str:
    """The run's file name push stored in the task."""
    return task["data"]["autolabel"]["file"]


def _expected(out: Path) -> dict[str, tuple[dict, list[dict]]]:
    """file_name -> (COCO image, its annotations) of a run folder."""
    coco = json.loads((out / "annotations.json").read_text())
    return {
        im["file_name"]: (im, [a for a in coco["annotations"] if a["image_id"] == im["id"]])
        for im in coco["images"]
    }


def _assert_regions_equal(result: list[dict], annotations: list[dict], names: list[str]) -> None:
    assert len(result) == len(annotations)
    for region, ann in zip(result, annotations, strict=True):
        label, mask = region_mask(region)
        assert label == names[ann["category_id"] - 1]
        assert np.array_equal(mask, decode_rle(ann["segmentation"]))
        assert region["score"] == pytest.approx(ann["score"], abs=1e-5)


def test_push_reads_back_exactly_and_is_idempotent(
    label_studio: LabelStudioServer, tiny_run: Path, image_folder: Path, vocab_file: Path,
    tiny_recipe: Path, tmp_path: Path,
) -> None:  # fmt: skip
    ls, client = label_studio, _client(label_studio)
    title = f"push {tmp_path.name}"
    code = main([
        "push", "labelstudio", str(tiny_run), "--url", ls.url, "--api-key", ls.api_key,
        "--title", title, "--document-root", str(ls.document_root),
    ])  # fmt: skip
    assert code == 0
    project_id = _project_id(client, title)
    run = read_run(tiny_run)
    version = run_model_version(run)
    expected = _expected(tiny_run)
    tasks = _tasks(client, project_id)
    assert sorted(_file(t) for t in tasks) == sorted(expected)
    for task in tasks:
        image, annotations = expected[_file(task)]
        (prediction,) = task["predictions"]
        assert prediction["model_version"] == version
        # The review priority is task data, a column the Data Manager sorts by.
        assert task["data"]["priority"] == image["priority"]
        assert prediction["score"] == pytest.approx(1.0 - image["priority"], abs=1e-6)
        _assert_regions_equal(prediction["result"], annotations, run.vocabulary.names)
        assert all(
            (r["original_width"], r["original_height"]) == (image["width"], image["height"])
            for r in prediction["result"]
        )
        # Label Studio serves the image itself through the Local Storage push created.
        served = httpx.get(
            ls.url + task["data"]["image"], headers={"Authorization": f"Token {ls.api_key}"}
        )
        assert served.status_code == 200
        assert served.content == (image_folder / image["file_name"]).read_bytes()

    again = push_run(
        tiny_run, ls.url, ls.api_key, project_id=project_id, document_root=ls.document_root
    )
    assert (again.tasks_created, again.predictions_created) == (0, 0)
    assert again.unchanged == len(expected)
    assert not again.storage_created
    assert [len(t["predictions"]) for t in _tasks(client, project_id)] == [1] * len(expected)

    # A newer run with other settings over the same images adds its predictions to the tasks.
    newer = tmp_path / "newer"
    # A sharper softmax: other regions and other review priorities.
    sharper = Labeler(
        vocab_file, recipe=str(tiny_recipe), device="cpu", settings={"logit_scale": 4000}
    )
    sharper.label_folder(image_folder, newer)
    update = push_run(
        newer, ls.url, ls.api_key, project_id=project_id, document_root=ls.document_root
    )
    assert (update.tasks_created, update.predictions_created) == (0, len(expected))
    newer_version = run_model_version(read_run(newer))
    assert newer_version != version
    tasks = _tasks(client, project_id)
    assert len(tasks) == len(expected)
    newer_images = {f: image for f, (image, _) in _expected(newer).items()}
    changed = {f for f, im in newer_images.items() if im["priority"] != expected[f][0]["priority"]}
    assert changed, "the newer run should change some priority for this test to mean anything"
    assert update.priorities_updated == len(changed)
    for task in tasks:
        versions = sorted(p["model_version"] for p in task["predictions"])
        assert versions == sorted([version, newer_version])
        # The Data Manager sorts on task data: it now holds the newer run's priority.
        assert task["data"]["priority"] == newer_images[_file(task)]["priority"]
        assert task["data"]["image"] and task["data"]["autolabel"]["file"] == _file(task)
    assert client.projects.get(id=project_id).model_version == newer_version


def test_push_reads_a_run_in_object_storage(
    label_studio: LabelStudioServer, image_folder: Path, vocab_file: Path, tiny_recipe: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    import fsspec
    from conftest import tiny_config

    from autolabel.runner import run_job

    memory = fsspec.filesystem("memory")  # an object store: no rename, no append
    url = f"memory://ls-{tmp_path.name}"
    ls, client = label_studio, _client(label_studio)
    title = f"object storage {tmp_path.name}"
    try:
        assert run_job(tiny_config(image_folder, vocab_file, url, tiny_recipe)).ok == 3
        prefix = "http://images.example.invalid/in"
        code = main([
            "push", "labelstudio", url, "--url", ls.url, "--api-key", ls.api_key,
            "--title", title, "--url-prefix", prefix,
        ])  # fmt: skip
        assert code == 0
        coco = json.loads(memory.cat_file(f"/ls-{tmp_path.name}/annotations.json"))
    finally:
        memory.rm(f"/ls-{tmp_path.name}", recursive=True)
    tasks = _tasks(client, _project_id(client, title))
    names = {im["file_name"] for im in coco["images"]}
    assert sorted(t["data"]["image"] for t in tasks) == sorted(f"{prefix}/{n}" for n in names)
    regions = sum(len(t["predictions"][0]["result"]) for t in tasks)
    assert regions == len(coco["annotations"]) > 0


def test_pull_after_review(label_studio: LabelStudioServer, tiny_run: Path, tmp_path: Path) -> None:
    ls, client = label_studio, _client(label_studio)
    summary = push_run(
        tiny_run, ls.url, ls.api_key, title=f"pull {tmp_path.name}", document_root=ls.document_root
    )
    run = read_run(tiny_run)
    tasks = sorted(
        _tasks(client, summary.project_id), key=lambda t: len(t["predictions"][0]["result"])
    )
    edited, accepted = tasks[-1], tasks[-2]  # the two with most regions; the third unreviewed
    assert edited["predictions"][0]["result"], "the tiny model found nothing to review"
    for task, result in (
        (accepted, accepted["predictions"][0]["result"]),
        (edited, edited["predictions"][0]["result"][1:]),  # the reviewer deleted a region
    ):
        client.annotations.create(
            id=task["id"], result=result, parent_prediction=task["predictions"][0]["id"]
        )
    output = tmp_path / "reviewed.json"
    code = main([
        "pull", "labelstudio", "--url", ls.url, "--api-key", ls.api_key,
        "--project", str(summary.project_id), "-o", str(output),
    ])  # fmt: skip
    assert code == 0
    coco = json.loads(output.read_text())
    assert [c["name"] for c in coco["categories"]] == run.vocabulary.names
    expected = _expected(tiny_run)
    by_file = {im["file_name"]: im for im in coco["images"]}
    assert set(by_file) == {
        _file(accepted),
        _file(edited),
    }
    for task, dropped in ((accepted, 0), (edited, 1)):
        file_name = _file(task)
        image = by_file[file_name]
        got = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        want = expected[file_name][1][dropped:]
        assert [a["category_id"] for a in got] == [a["category_id"] for a in want]
        for a, b in zip(got, want, strict=True):
            assert np.array_equal(decode_rle(a["segmentation"]), decode_rle(b["segmentation"]))
            assert a["area"] == b["area"] and a["bbox"] == b["bbox"]
    report = json.loads(output.with_name("reviewed.review.json").read_text())
    assert report["summary"]["images_reviewed"] == 2
    assert report["summary"]["accepted_as_is"] == 1
    assert report["summary"]["tasks_without_annotation"] == 1
    reviews = {r["file"]: r for r in report["images"]}
    assert reviews[_file(accepted)]["accepted_as_is"]
    edited_review = reviews[_file(edited)]
    assert not edited_review["accepted_as_is"]
    removed = run.vocabulary.names[expected[_file(edited)][1][0]["category_id"] - 1]
    assert edited_review["iou"][removed] < 1.0
    assert edited_review["model_version"] == run_model_version(run)


@pytest.fixture
def backend(tiny_recipe: Path, label_studio: LabelStudioServer) -> Iterator[tuple[str, Predictor]]:
    """The ML backend with basic auth, fetching images from Label Studio over HTTP."""
    media = MediaResolver(ls_url=label_studio.url, api_key=label_studio.api_key)
    labeler = Labeler(SERVE_VOCABULARY, recipe=str(tiny_recipe), device="cpu", min_area=0)
    predictor = Predictor(labeler, media)
    server = BackendServer(("127.0.0.1", 0), predictor, basic_auth=("ls", "backend-pass"))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", predictor
    server.shutdown()
    server.server_close()


def test_ml_backend_serves_label_studio(
    label_studio: LabelStudioServer, backend: tuple[str, Predictor], tiny_run: Path,
    image_folder: Path, vocab_file: Path, tmp_path: Path,
) -> None:  # fmt: skip
    ls, client = label_studio, _client(label_studio)
    backend_url, predictor = backend
    config = make_label_config(load_vocabulary(vocab_file))
    project = client.projects.create(title=f"backend {tmp_path.name}", label_config=config)
    client.import_storage.local.create(project=project.id, path=str(image_folder))
    urls = ImageUrls.checked(image_folder, ls.document_root, None)
    expected = _expected(tiny_run)
    client.projects.import_tasks(
        id=project.id, request=[{"data": {"image": urls.url(name)}} for name in expected]
    )
    client.ml.create(
        project=project.id, url=backend_url, title="autolabel", is_interactive=False,
        auth_method="BASIC_AUTH", basic_auth_user="ls", basic_auth_pass="backend-pass",
    )  # fmt: skip
    client.actions.create(
        id="retrieve_tasks_predictions", project=project.id,
        selected_items={"all": True, "excluded": []},
    )  # fmt: skip
    tasks = _tasks(client, project.id)
    assert len(tasks) == len(expected)
    version = predictor.spec(config).model_version
    # Same recipe and model as the run: the same version, so LS would not ask again for tasks
    # a push pre-annotated, and the same masks.
    assert version == run_model_version(read_run(tiny_run))
    names = load_vocabulary(vocab_file).names
    for task in tasks:
        (prediction,) = task["predictions"]
        assert prediction["model_version"] == version
        file_name = (
            task["data"]["image"]
            .split("?d=", 1)[1]
            .removeprefix(image_folder.relative_to(ls.document_root).as_posix() + "/")
        )
        _assert_regions_equal(prediction["result"], expected[file_name][1], names)
    metrics = httpx.get(f"{backend_url}/metrics", auth=("ls", "backend-pass")).json()
    assert metrics["tasks"] == len(expected)


def test_push_refuses_a_wrong_key_and_a_mismatching_project(
    label_studio: LabelStudioServer, tiny_run: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    ls, client = label_studio, _client(label_studio)
    common = ["push", "labelstudio", str(tiny_run), "--url", ls.url]
    where = ["--document-root", str(ls.document_root)]
    assert main([*common, "--api-key", "wrong-key", "--title", "x", *where]) == 2
    assert "refused the API key" in capsys.readouterr().err
    config = (
        '<View><Image name="image" value="$image"/><BrushLabels name="brush" toName="image">'
        '<Label value="red square"/></BrushLabels></View>'
    )
    project = client.projects.create(title=f"mismatch {tmp_path.name}", label_config=config)
    code = main([*common, "--api-key", ls.api_key, "--project", str(project.id), *where])
    assert code == 2
    err = capsys.readouterr().err
    assert "no BrushLabels label for 'blue disc', 'green bar'" in " ".join(err.split())
    assert list(client.tasks.list(project=project.id)) == []


def test_interactive_click_through_label_studio_is_stored_back(
    label_studio: LabelStudioServer, backend: tuple[str, Predictor], image_folder: Path,
    vocab_file: Path, tmp_path: Path,
) -> None:  # fmt: skip
    """LS's interactive-annotating endpoint (what its frontend calls for a smart keypoint)
    reaches the backend with the click as context; the region returned is the instance under
    the click, and LS stores it as an annotation and as a prediction of the task."""
    ls, client = label_studio, _client(label_studio)
    backend_url, predictor = backend
    names = load_vocabulary(vocab_file).names
    keypoints = "".join(f'<Label value="{name}"/>' for name in names)
    config = make_label_config(load_vocabulary(vocab_file)).replace(
        "</View>",
        f'<KeyPointLabels name="click" toName="image" smart="true">{keypoints}</KeyPointLabels>'
        '<TextArea name="prompt" toName="image" editable="true"/></View>',
    )
    project = client.projects.create(title=f"interactive {tmp_path.name}", label_config=config)
    client.import_storage.local.create(project=project.id, path=str(image_folder))
    urls = ImageUrls.checked(image_folder, ls.document_root, None)
    client.projects.import_tasks(id=project.id, request=[{"data": {"image": urls.url("a.png")}}])
    (task,) = _tasks(client, project.id)
    ml = client.ml.create(
        project=project.id, url=backend_url, title="autolabel interactive", is_interactive=True,
        auth_method="BASIC_AUTH", basic_auth_user="ls", basic_auth_pass="backend-pass",
    )  # fmt: skip

    # The instance to click on: the largest of the backend's own pre-annotation of the task.
    (pre,) = predictor.predict([{"id": task["id"], "data": task["data"]}], config)
    # Several regions: an answer with one shows that the click chose among them.
    assert len(pre["result"]) > 1, "the tiny model found too little in a.png"
    label, instance = max(
        (region_mask(r) for r in pre["result"]), key=lambda pair: int(pair[1].sum())
    )
    height, width = instance.shape
    rows, cols = np.nonzero(instance)
    row, col = int(rows[len(rows) // 2]), int(cols[len(cols) // 2])
    if not instance[row, col]:
        row, col = int(rows[0]), int(cols[0])
    click = {
        "id": "click1", "from_name": "click", "to_name": "image", "type": "keypointlabels",
        "origin": "manual", "original_width": width, "original_height": height,
        "image_rotation": 0, "is_positive": True,
        "value": {
            "x": (col + 0.5) * 100 / width, "y": (row + 0.5) * 100 / height, "width": 0.5,
            "keypointlabels": [label],
        },
    }  # fmt: skip
    response = httpx.post(
        f"{ls.url}/api/ml/{ml.id}/interactive-annotating",
        json={"task": task["id"], "context": {"result": [click]}},
        headers={"Authorization": f"Token {ls.api_key}"},
        timeout=120,
    )
    assert response.status_code == 200, response.text[:500]
    answer = response.json()
    assert "errors" not in answer, answer
    data = answer["data"]
    assert data["model_version"] == predictor.spec(config).model_version
    (region,) = data["result"]
    got_label, got_mask = region_mask(region)
    assert got_label == label
    assert np.array_equal(got_mask, instance)

    # Accepted by LS as the task's annotation and as a prediction, and read back unchanged.
    client.annotations.create(id=task["id"], result=data["result"])
    client.predictions.create(
        task=task["id"], result=data["result"], score=data["score"],
        model_version=data["model_version"],
    )  # fmt: skip
    (stored,) = _tasks(client, project.id)
    (annotation,) = stored["annotations"]
    (prediction,) = [
        p for p in stored["predictions"] if p["model_version"] == data["model_version"]
    ]
    for result in (annotation["result"], prediction["result"]):
        ((stored_label, stored_mask),) = [region_mask(r) for r in result]
        assert stored_label == label
        assert np.array_equal(stored_mask, instance)


def test_each_sam_instance_arrives_as_one_region(
    label_studio: LabelStudioServer, tmp_path: Path
) -> None:
    from autolabel.toyworld.export import write_dataset

    ls, client = label_studio, _client(label_studio)
    scenes = tmp_path / "scenes"
    count = 4  # toy scenes of a seed no toy model was trained on
    write_dataset(scenes, count, 4243, 128)
    out = tmp_path / "run"
    labeler = Labeler(
        scenes / "vocab.txt", model="toy", method="fast", refine="crf+sam", device="cpu"
    )
    labeler.label_folder(scenes / "images", out)
    title = f"sam {tmp_path.name}"
    code = main([
        "push", "labelstudio", str(out), "--url", ls.url, "--api-key", ls.api_key,
        "--title", title, "--document-root", str(ls.document_root),
    ])  # fmt: skip
    assert code == 0
    expected = _expected(out)
    names = read_run(out).vocabulary.names
    tasks = _tasks(client, _project_id(client, title))
    assert len(tasks) == count
    for task in tasks:
        _, annotations = expected[_file(task)]
        (prediction,) = task["predictions"]
        _assert_regions_equal(prediction["result"], annotations, names)
    assert sum(len(anns) for _, anns in expected.values()) > 0
    assert json.loads((out / "run.json").read_text())["models"]["sam_class"] == "SamModel"
