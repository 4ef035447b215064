"""The Serve app's parts that need no Ray: the offline API docs, a batch with a failing request in
it, and where overload is refused."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from serve_helpers import random_motion_modules

from animatediff.config import load_config
from animatediff.generation import GenerationParams

ROOT = Path(__file__).resolve().parents[1]
CFG = load_config(ROOT / "configs/tiny.yaml")


def test_docs_page_loads_everything_from_the_app_itself():
    """/docs once pulled Swagger UI from a CDN: a blank page on an air-gapped cluster."""
    from serving.app import app

    client = TestClient(app)
    page = client.get("/docs")
    assert page.status_code == 200
    links = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert links and all(link.startswith("/docs/assets/") for link in links), links
    assert "://" not in page.text.replace("http://www.w3.org", "")
    for link in links:
        asset = client.get(link)
        assert asset.status_code == 200 and len(asset.content) > 500, link
    script = client.get("/docs/assets/swagger-ui-bundle.js").text
    assert "SwaggerUIBundle" in script and "isOAS31" in script  # renders FastAPI's OpenAPI 3.1
    assert "url: '/openapi.json'" in page.text
    for name in ("../__init__.py", "index.html", "%2e%2e%2fmain.py"):
        assert client.get(f"/docs/assets/{name}").status_code == 404
    assert client.get("/redoc").status_code == 404  # ReDoc would need a CDN too


def test_docs_page_follows_the_route_prefix():
    from serving.app import app

    page = TestClient(app, root_path="/prefix").get("/docs")
    assert "url: '/prefix/openapi.json'" in page.text
    assert 'src="/prefix/docs/assets/swagger-ui-bundle.js"' in page.text


@pytest.fixture(scope="module")
def pipeline():
    from animatediff.base_model import load_base_model
    from animatediff.sampling import TextToVideo
    from animatediff.unet import VideoUNet

    base = load_base_model(CFG.model.base)
    unet = VideoUNet.from_unet2d(base.unet, CFG.model.motion, random_motion_modules(CFG, 1))
    return TextToVideo(CFG, base=base, unet=unet)


@pytest.fixture
def loaded_model(pipeline):
    """A model just loaded on a replica (``fresh``: its first batch reports the load), for each
    test: which test batches first must not matter."""
    from serving.app import LoadedModel

    return LoadedModel(pipeline, "1", "default", 0.0)


def _request(prompt: str, seed: int) -> dict:
    fields = {"prompt": prompt, "num_frames": 2, "num_inference_steps": 2, "seed": seed}
    return GenerationParams.resolve(fields, CFG.sample, default_seed=0).to_dict()


def test_a_failing_request_fails_alone_in_its_batch(loaded_model):
    """A request the tokenizer refuses (a lone surrogate, here past the schema that now refuses
    it) used to fail every request batched with it with a 500. The batch is handed to the
    generator's batch body directly, so the batch composition is exact, not timing-dependent."""
    from serving.app import generate_batch

    good = [_request("a red ball", 1), _request("waves", 2)]
    poisoned = _request("a\ud800b", 3)
    broken = {"prompt": "no other field"}  # not even a GenerationParams
    results = asyncio.run(generate_batch(loaded_model, [good[0], poisoned, broken, good[1]]))
    assert len(results) == 4
    assert "video" not in results[1] and "error" in results[1]
    assert results[1]["error"].startswith(("TypeError", "UnicodeEncodeError", "ValueError"))
    assert "video" not in results[2] and "TypeError" in results[2]["error"]
    for index, request in ((0, good[0]), (3, good[1])):
        assert results[index]["content_type"] == "image/gif", results[index]
        (alone,) = asyncio.run(generate_batch(loaded_model, [request]))
        assert results[index]["video"] == alone["video"]  # as if it had been alone
    assert [r["loaded"] for r in results] == [True] * 4  # the first batch paid for the load


def test_valid_requests_still_share_one_batch(loaded_model):
    from serving.app import generate_batch

    batch = [_request("a", 1), _request("b", 2)]
    first = asyncio.run(generate_batch(loaded_model, batch))
    assert [r["batch_size"] for r in first] == [2, 2]
    assert [r["loaded"] for r in first] == [True, True]  # the load is reported once
    again = asyncio.run(generate_batch(loaded_model, batch))
    assert [r["loaded"] for r in again] == [False, False]


def test_the_ingress_refuses_before_serves_proxy_does():
    """Serve's proxy answers a plain-text 503 without Retry-After when the ingress queue is
    full: the ingress's own limit (JSON 503 with Retry-After) must be reached long before."""
    from serving.app import _ingress_options, admission_limit

    s = CFG.serve
    limit = admission_limit(CFG)
    assert limit >= (s.max_ongoing_requests + s.max_queued_requests) * s.autoscaling.max_replicas
    options = _ingress_options(CFG)
    assert options["max_ongoing_requests"] >= 4 * limit
    assert options["max_queued_requests"] >= limit
