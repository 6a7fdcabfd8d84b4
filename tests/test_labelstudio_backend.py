"""The ML backend over real HTTP on loopback, with a real (tiny, random) segmenter."""

from __future__ import annotations

import base64
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import draw_scene

from autolabel.errors import MediaError, UsageError
from autolabel.instances import decode_rle
from autolabel.io.run_folder import read_run
from autolabel.sinks.labelstudio.backend.app import BackendServer, ServerLimits
from autolabel.sinks.labelstudio.backend.media import MediaResolver
from autolabel.sinks.labelstudio.backend.predictor import SERVE_VOCABULARY, ConfigError, Predictor
from autolabel.sinks.labelstudio.config import make_label_config
from autolabel.sinks.labelstudio.push import run_model_version
from autolabel.sinks.labelstudio.regions import region_mask
from autolabel.vocab import load_vocabulary


def _start(server: BackendServer) -> str:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{server.server_port}"


@pytest.fixture
def backend(predictor: Predictor) -> Iterator[str]:
    """A running backend; yields its base URL."""
    server = BackendServer(("127.0.0.1", 0), predictor, ServerLimits(max_body_bytes=200_000))
    url = _start(server)
    yield url
    server.shutdown()
    server.server_close()


@pytest.fixture
def config(vocab_file: Path) -> str:
    """A labeling config generated from the test vocabulary."""
    return make_label_config(load_vocabulary(vocab_file))


def _task(task_id: int, image: str) -> dict:
    return {"id": task_id, "data": {"image": image}, "project": 1}


def test_health_setup_and_webhook(backend: str, config: str, predictor: Predictor) -> None:
    health = httpx.get(f"{backend}/health")
    assert health.status_code == 200
    assert health.json() == {"status": "UP", "model_class": "AutolabelBackend"}
    setup = httpx.post(f"{backend}/setup", json={"project": "3.1700000000", "schema": config})
    assert setup.status_code == 200
    assert setup.json()["model_version"] == predictor.spec(config).model_version
    hook = httpx.post(f"{backend}/webhook", json={"action": "ANNOTATION_CREATED", "project": {}})
    assert hook.status_code == 201


def test_predict_matches_autolabel_run_and_keeps_one_entry_per_task(
    backend: str, config: str, tiny_run: Path
) -> None:
    """The backend's masks equal `autolabel run`'s on the same image (same recipe, same
    process-wide model), and failing tasks still get their (empty) entry, in order."""
    body = {
        "tasks": [
            _task(1, "/data/local-files/?d=images/sub/c.png"),
            _task(2, "/data/local-files/?d=images/missing.png"),
            _task(3, "http://example.invalid/a.png"),
            _task(4, "/data/local-files/?d=../../../etc/passwd"),
            {"id": 5, "data": {"text": "no image key"}},
            _task(6, "/data/local-files/?d=images/a.png"),
        ],
        "project": "1.1700000000",
        "label_config": config,
        "params": {"context": None},
    }
    response = httpx.post(f"{backend}/predict", json=body, timeout=120)
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == 6
    assert [bool(r["result"]) for r in results] == [True, False, False, False, False, True]
    assert {r["model_version"] for r in results} == {run_model_version(read_run(tiny_run))}
    coco = json.loads((tiny_run / "annotations.json").read_text())
    for result, name in ((results[0], "sub/c.png"), (results[5], "a.png")):
        image = next(im for im in coco["images"] if im["file_name"] == name)
        expected = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        assert len(result["result"]) == len(expected)
        # The Data Manager's "Prediction score": ascending = review order.
        assert result["score"] == pytest.approx(1.0 - image["priority"], abs=1e-6)
        for region, ann in zip(result["result"], expected, strict=True):
            label, mask = region_mask(region)
            assert label == coco["categories"][ann["category_id"] - 1]["name"]
            assert (region["original_height"], region["original_width"]) == (
                image["height"],
                image["width"],
            )
            assert np.array_equal(mask, decode_rle(ann["segmentation"]))
            assert region["score"] == pytest.approx(ann["score"], abs=1e-5)


def test_each_config_gets_its_vocabulary_and_the_shared_models(
    predictor: Predictor, config: str, vocab_file: Path
) -> None:
    spec = predictor.spec(config)
    assert spec.labeler.vocabulary.names == load_vocabulary(vocab_file).names
    assert spec.labeler.vocabulary.background == SERVE_VOCABULARY.background
    assert spec.labeler.load() is predictor.labeler.load()  # models loaded once
    other = config.replace("green bar", "sky")  # a label that is also a background word
    other_spec = predictor.spec(other)
    assert "sky" in other_spec.labeler.vocabulary.names
    assert "sky" not in other_spec.labeler.vocabulary.background
    assert other_spec.model_version != spec.model_version
    assert predictor.spec(config) is spec  # cached per config text
    with pytest.raises(ConfigError, match="no <BrushLabels>") as caught:
        predictor.spec('<View><Image name="i" value="$i"/></View>')
    assert isinstance(caught.value, UsageError)


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/predict", b"{not json", 400),
        ("POST", "/predict", b"[1, 2]", 400),
        ("POST", "/predict", json.dumps({"tasks": "x", "label_config": "<View/>"}).encode(), 400),
        ("POST", "/predict", json.dumps({"tasks": [1], "label_config": "<View/>"}).encode(), 400),
        ("POST", "/predict", json.dumps({"tasks": []}).encode(), 400),
        ("POST", "/predict", json.dumps({"tasks": [], "label_config": "<View>"}).encode(), 422),
        ("POST", "/predict", json.dumps({"tasks": [], "label_config": "<View/>"}).encode(), 422),
        ("POST", "/setup", json.dumps({"project": "1"}).encode(), 400),
        ("POST", "/webhook", json.dumps({"event": 1}).encode(), 400),
        ("POST", "/predict", b"x" * 300_000, 413),
        ("GET", "/predict", b"", 405),
        ("PUT", "/setup", b"{}", 405),
        ("DELETE", "/health", b"", 405),
        ("POST", "/nope", b"{}", 404),
        ("GET", "/../../etc/passwd", b"", 404),
    ],
)
def test_malformed_requests_get_4xx(
    backend: str, method: str, path: str, body: bytes, status: int
) -> None:
    response = httpx.request(method, backend + path, content=body)
    assert response.status_code == status
    assert "detail" in response.json()


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /health HTTP/2.0\r\n\r\n",
        b"BREW /health HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    ],
)
def test_broken_http_gets_4xx(backend: str, raw: bytes) -> None:
    host, port = backend.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(raw)
        status_line = sock.recv(200).split(b"\r\n", 1)[0]
    code = int(status_line.split()[1])
    assert 400 <= code < 500, status_line


def test_basic_auth(predictor: Predictor) -> None:
    server = BackendServer(("127.0.0.1", 0), predictor, basic_auth=("ls", "s3cret"))
    url = _start(server)
    try:
        assert httpx.get(f"{url}/health").status_code == 401
        assert httpx.get(f"{url}/health", auth=("ls", "wrong")).status_code == 401
        bad = {"Authorization": "Basic " + base64.b64encode(b"\xff\xfe").decode()}
        assert httpx.get(f"{url}/health", headers=bad).status_code == 401
        assert httpx.get(f"{url}/health", auth=("ls", "s3cret")).status_code == 200
    finally:
        server.shutdown()
        server.server_close()


def test_connections_are_bounded(predictor: Predictor) -> None:
    limits = ServerLimits(max_connections=1, socket_timeout_s=30)
    server = BackendServer(("127.0.0.1", 0), predictor, limits)
    url = _start(server)
    host, port = "127.0.0.1", server.server_port
    try:
        idle = socket.create_connection((host, port))  # holds the only slot
        try:
            busy = httpx.get(f"{url}/health")
            assert busy.status_code == 503
        finally:
            idle.close()
        for _ in range(50):  # the slot comes back once the idle connection is gone
            if httpx.get(f"{url}/health").status_code == 200:
                break
        else:
            pytest.fail("the connection slot was not released")
    finally:
        server.shutdown()
        server.server_close()


def test_media_resolver_reads_only_allowed_places(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "set").mkdir(parents=True)
    draw_scene(20, 10, 0).save(root / "set" / "a.png")
    (tmp_path / "secret.png").write_bytes(b"x")
    media = MediaResolver(ls_url="http://127.0.0.1:1", api_key="k", document_root=root)
    path = media.fetch("/data/local-files/?d=set/a.png", 1, tmp_path)
    assert path == root / "set" / "a.png"
    refused = [
        "/data/local-files/?d=../secret.png",
        "/data/local-files/?d=/etc/passwd",
        str(tmp_path / "secret.png"),
        f"file://{tmp_path / 'secret.png'}",
        "http://169.254.169.254/latest/meta-data",
        "ftp://127.0.0.1:1/a.png",
        "",
        None,
    ]
    for url in refused:
        with pytest.raises(MediaError):
            media.fetch(url, 1, tmp_path)
    with pytest.raises(MediaError, match="LABEL_STUDIO_URL"):
        MediaResolver().fetch("/data/upload/1/a.png", 1, tmp_path)


def test_predict_passes_context_and_params_but_not_credentials(
    predictor: Predictor, config: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LS's interactive requests carry `params.context`; the backend's own basic-auth login
    and password (also in params) are not handed to the model side."""
    seen: dict = {}

    def predict(
        tasks: list[dict],
        label_config: str,
        context: dict | None = None,
        params: dict | None = None,
    ) -> list[dict]:
        seen.update(tasks=tasks, context=context, params=params)
        return [{"model_version": "v", "score": 0.0, "result": []} for _ in tasks]

    monkeypatch.setattr(predictor, "predict", predict)
    server = BackendServer(("127.0.0.1", 0), predictor)
    url = _start(server)
    try:
        context = {"result": [{"type": "keypointlabels", "value": {"x": 1, "y": 2}}]}
        body = {
            "tasks": [_task(1, "/data/local-files/?d=images/a.png")],
            "label_config": config,
            "project": "1.1700000000",
            "params": {"login": "ls", "password": "secret", "context": context},
        }
        response = httpx.post(f"{url}/predict", json=body, timeout=30)
        assert response.status_code == 200
        assert response.json()["results"] == [{"model_version": "v", "score": 0.0, "result": []}]
        assert seen["context"] == context
        assert seen["params"] == {"context": context}
        assert seen["tasks"] == body["tasks"]
    finally:
        server.shutdown()
        server.server_close()


def test_protocol_messages_are_validated_models() -> None:
    from pydantic import ValidationError

    from autolabel.sinks.labelstudio.backend.app import PredictRequest, SetupRequest

    setup = SetupRequest.model_validate_json(
        '{"project": "3.17", "schema": "<View/>", "hostname": "http://ls", "access_token": "t"}'
    )
    assert (setup.label_config, setup.project) == ("<View/>", "3.17")
    request = PredictRequest.model_validate({"tasks": [{"id": 1}], "project": 3})
    assert request.tasks == [{"id": 1}] and request.label_config is None
    for bad in ('{"tasks": [1]}', '{"tasks": "x"}', "[]", '{"schema": ""}'):
        with pytest.raises(ValidationError):
            (SetupRequest if "schema" in bad else PredictRequest).model_validate_json(bad)
