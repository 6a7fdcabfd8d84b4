"""Latency of the Label Studio ML backend at its advertised concurrency.

Starts the backend in-process on loopback with the bundled toy model (`toy-fast` recipe,
offline), then sends --requests /predict requests from --clients threads, each request on a
new connection, each with one task whose image is read from a temporary Local Storage folder.
Prints the answers by status and the p50/p95/max latency; exits 1 unless every answer is 200.

    python benchmarks/labelstudio_backend.py                      # 200 requests, 16 clients
    python benchmarks/labelstudio_backend.py --workers 2 --requests 400 --timeout 300
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def draw(width: int, height: int, seed: int) -> Image.Image:
    """Noise with a red square, a blue disc and a green bar."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(90, 160, size=(height, width, 3), dtype=np.uint8))
    pen = ImageDraw.Draw(image)
    pen.rectangle([width * 0.1, height * 0.1, width * 0.4, height * 0.45], fill=(220, 20, 20))
    pen.ellipse([width * 0.55, height * 0.5, width * 0.9, height * 0.9], fill=(20, 30, 220))
    pen.rectangle([width * 0.05, height * 0.7, width * 0.45, height * 0.8], fill=(20, 200, 40))
    return image


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1, help="the backend's --workers")
    parser.add_argument("--recipe", default="toy-fast")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--side", type=int, default=128, help="image width (height is 3/4)")
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=600.0, help="bound on the whole load")
    args = parser.parse_args()

    import torch

    from autolabel.api import Labeler
    from autolabel.sinks.labelstudio.backend.app import BackendServer, ServerLimits
    from autolabel.sinks.labelstudio.backend.media import MediaResolver
    from autolabel.sinks.labelstudio.backend.predictor import SERVE_VOCABULARY, Predictor
    from autolabel.sinks.labelstudio.config import make_label_config
    from autolabel.vocab import VocabClass, Vocabulary

    torch.set_num_threads(args.torch_threads)
    with tempfile.TemporaryDirectory(prefix="autolabel-bench-") as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        for i in range(args.images):
            draw(args.side, args.side * 3 // 4, i).save(root / "images" / f"{i}.png")
        vocab = Vocabulary(tuple(VocabClass(n) for n in ("red square", "blue disc", "green bar")))
        config = make_label_config(vocab)
        labeler = Labeler(SERVE_VOCABULARY, recipe=args.recipe, device="cpu", min_area=0)
        predictor = Predictor(labeler, MediaResolver(document_root=root))
        server = BackendServer(
            ("127.0.0.1", 0), predictor, ServerLimits(predict_slots=args.workers)
        )
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        port = server.server_port

        def body(i: int) -> bytes:
            image = f"/data/local-files/?d=images/{i % args.images}.png"
            task = {"id": i, "data": {"image": image}}
            return json.dumps({"tasks": [task], "label_config": config}).encode()

        def one(i: int) -> tuple[int, float]:
            started = time.perf_counter()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=args.timeout)
            try:
                connection.request(
                    "POST", "/predict", body(i), {"Content-Type": "application/json"}
                )
                response = connection.getresponse()
                response.read()
                return response.status, time.perf_counter() - started
            except OSError:
                return 0, time.perf_counter() - started
            finally:
                connection.close()

        try:
            one(0)  # warm-up: the config's text embeddings, first-call costs
            started = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                answers = list(pool.map(one, range(args.requests), timeout=args.timeout))
            wall = time.perf_counter() - started
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=10)

    statuses = Counter(status for status, _ in answers)
    latencies = sorted(seconds for _, seconds in answers)
    p95 = latencies[max(0, int(round(0.95 * len(latencies))) - 1)]
    print(
        f"{args.requests} predictions, {args.clients} clients (a new connection each), "
        f"--workers {args.workers}, recipe {args.recipe}, {args.side} px images"
    )
    print(
        "answers: " + ", ".join(f"{code or 'error'}: {n}" for code, n in sorted(statuses.items()))
    )
    print(
        f"latency p50 {statistics.median(latencies) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
        f"max {latencies[-1] * 1000:.0f} ms; "
        f"{args.requests / wall:.1f} requests/s over {wall:.1f} s"
    )
    return 0 if statuses == Counter({200: args.requests}) else 1


if __name__ == "__main__":
    sys.exit(main())
