"""The Serve app over real HTTP on the session Ray cluster: registry-backed models, batching,
overload, validation, auth, alias moves, and the web page in headless Chromium.

The app is deployed the way users do it: ``jobs.serve.deploy`` with the args of
``infra/serve_config.yaml`` (tiny preset) plus test overrides (port, SQLite registry, short TTL).
"""

from __future__ import annotations

import asyncio
import io
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image
from serve_helpers import free_port, register_motion_lora, register_versions

from animatediff.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def _frames(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    frames = []
    for index in range(getattr(image, "n_frames", 1)):
        image.seek(index)
        frames.append(np.asarray(image.convert("RGB")))
    return np.stack(frames)


@pytest.fixture(scope="module")
def server(ray_cluster, tmp_path_factory):
    """(base URL, config, versions) of the app deployed on a free loopback port."""
    from ray import serve

    from serving.deploy import deploy

    work = tmp_path_factory.mktemp("serve")
    args = yaml.safe_load((ROOT / "infra/serve_config.yaml").read_text())["applications"][0]["args"]
    overrides = [
        *args["overrides"],
        f"serve.port={free_port()}",
        f"mlflow.tracking_uri=sqlite:///{work}/mlflow.db",
        f"mlflow.artifact_location={work}/artifacts",
        "serve.alias_ttl_s=0.5",
        # A personalized base: the tiny base with other random weights (same architecture).
        "serve.bases.seeded.tiny_seed=7",
    ]
    cfg = load_config(ROOT / args["config"], overrides)
    versions = register_versions(cfg, work, seeds=[1, 2])
    register_motion_lora(cfg, work, "zoom_in", seed=3)
    url = deploy(cfg)
    assert url.startswith("http://127.0.0.1:")
    client = httpx.Client(base_url=url, timeout=120)
    # The first generation loads the model on the replica; later timings are warm.
    warm = client.post("/v1/generate", json={"prompt": "warm up", "seed": 0})
    assert warm.status_code == 200, warm.text
    yield url, cfg, versions, client
    client.close()
    serve.shutdown()


def test_health_docs_and_page(server):
    url, cfg, _, client = server
    assert client.get("/healthz").json()["status"] == "ok"
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/generate"]["post"]["requestBody"]["content"]["application/json"]
    assert "prompt" in body["schema"]["properties"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "cdn." not in docs.text  # works without internet
    assert client.get("/docs/assets/swagger-ui-bundle.js").status_code == 200
    page = client.get("/")
    assert page.headers["content-type"].startswith("text/html") and "v1/generate" in page.text


def test_models_lists_versions_and_aliases(server):
    _, cfg, versions, client = server
    info = client.get("/v1/models").json()
    assert info["model_name"] == cfg.mlflow.registered_model
    assert [v["version"] for v in info["versions"]] == versions
    assert info["aliases"]["champion"] == versions[0]
    assert info["aliases"]["candidate"] == versions[1]
    assert info["limits"]["max_frames"] == cfg.serve.limits.max_frames


def test_generate_returns_the_video_with_headers(server):
    _, cfg, versions, client = server
    request = {"prompt": "a red ball", "seed": 11, "num_frames": 4, "height": 48, "width": 64}
    response = client.post("/v1/generate", json=request)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/gif"
    assert response.headers["x-seed"] == "11"
    assert response.headers["x-model-version"] == versions[0]
    assert "generate;dur=" in response.headers["server-timing"]
    frames = _frames(response.content)
    assert frames.shape == (4, 48, 64, 3)
    # Same seed and inputs: the same video; another version of the motion module: another one.
    assert client.post("/v1/generate", json=request).content == response.content
    other = client.post("/v1/generate", json={**request, "model": f"v{versions[1]}"})
    assert other.headers["x-model-version"] == versions[1]
    assert not np.array_equal(_frames(other.content), frames)


@pytest.mark.parametrize(("fmt", "mime"), [("mp4", "video/mp4"), ("webp", "image/webp")])
def test_other_containers(server, fmt, mime):
    _, _, _, client = server
    response = client.post(
        "/v1/generate", json={"prompt": "waves", "num_frames": 2, "output_format": fmt}
    )
    assert response.status_code == 200 and response.headers["content-type"] == mime
    signature = {"mp4": b"ftyp", "webp": b"WEBP"}[fmt]
    assert signature in response.content[:16]
    assert response.headers["x-seed"].isdigit()  # a random seed, reported back


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"prompt": " "}, "prompt", "must not be empty"),
        ({"prompt": "a", "num_frames": 99}, "num_frames", "between 1 and 16"),
        ({"prompt": "a", "num_inference_steps": 0}, "num_inference_steps", "between 1"),
        ({"prompt": "a", "height": 30}, "height", "multiple of 8"),
        ({"prompt": "a", "model": "v42"}, "model", "unknown model 'v42'"),
        ({"prompt": "a", "base": "nope"}, "base", "unknown base 'nope'"),
        (
            {"prompt": "a", "motion_loras": [{"name": "pan_up"}]},
            "motion_loras.0.name",
            "unknown MotionLoRA 'pan_up'; known: zoom_in",
        ),
        (
            {"prompt": "a", "motion_loras": [{"name": "zoom_in/9"}]},
            "motion_loras.0.name",
            "unknown model '9'",
        ),
        (
            {"prompt": "a", "motion_loras": [{"name": "zoom_in", "scale": 9}]},
            "motion_loras.0.scale",
            "between -4.0 and 4.0",
        ),
        ({"prompt": "a", "negative_prompt": "x" * 9000}, "body", "limit is 8192"),
    ],
)
def test_bad_requests_get_422_naming_the_field(server, body, field, words):
    _, _, _, client = server
    response = client.post("/v1/generate", json=body)
    assert response.status_code == 422
    error = response.json()
    assert error["detail"][0]["loc"] == ["body", field]
    assert words in error["error"], error


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"prompt": "a", "seed": ' + b"9" * 5000 + b"}", "seed"),
        (b"[" * 3000, "body"),
        (b'{"prompt": "a\\ud800b"}', "prompt"),
        (b'{"prompt": "a", "num_frames": "8"}', "num_frames"),
    ],
)
def test_hostile_bodies_get_422_not_500(server, raw, field):
    _, _, _, client = server
    response = client.post(
        "/v1/generate", content=raw, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["field"] == field


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "image/gif"]
)
def test_bodies_that_are_not_json_get_415(server, content_type):
    _, _, _, client = server
    response = client.post(
        "/v1/generate", content=b'{"prompt": "a"}', headers={"Content-Type": content_type}
    )
    assert response.status_code == 415, response.text
    assert response.json()["detail"][0]["field"] == "content-type"


def test_motion_loras_are_listed_merged_per_scale_and_cached(server):
    """A MotionLoRA changes the video; each (version, base, LoRAs, scales) is its own cached
    pipeline; the response names what was merged."""
    _, _, versions, client = server
    listed = client.get("/v1/models").json()["motion_loras"]
    assert [(m["name"], m["versions"]) for m in listed] == [("zoom_in", ["1"])]
    assert listed[0]["registered_model"].endswith("-motion_lora-zoom_in")
    request = {"prompt": "a red ball", "seed": 4, "num_frames": 4, "model": versions[0]}
    plain = client.post("/v1/generate", json=request)
    body = {**request, "motion_loras": [{"name": "zoom_in", "scale": 1.0}]}
    first = client.post("/v1/generate", json=body)
    assert first.status_code == 200, first.text
    assert (
        first.headers["x-motion-loras"] == "zoom_in:1@1" and plain.headers["x-motion-loras"] == ""
    )
    assert first.headers["x-model-loaded"] == "1"
    assert not np.array_equal(_frames(first.content), _frames(plain.content))
    again = client.post(
        "/v1/generate", json={**body, "motion_loras": [{"name": "zoom_in@candidate"}]}
    )
    assert again.headers["x-model-loaded"] == "0" and again.content == first.content
    half = client.post(
        "/v1/generate", json={**body, "motion_loras": [{"name": "zoom_in", "scale": 0.5}]}
    )
    assert (
        half.headers["x-model-loaded"] == "1" and half.headers["x-motion-loras"] == "zoom_in:1@0.5"
    )
    assert not np.array_equal(_frames(half.content), _frames(first.content))


def test_personalized_base_changes_the_video(server):
    _, _, versions, client = server
    assert client.get("/v1/models").json()["bases"] == ["default", "seeded"]
    request = {"prompt": "a red ball", "seed": 3, "num_frames": 2, "model": versions[0]}
    default = client.post("/v1/generate", json=request)
    seeded = client.post("/v1/generate", json={**request, "base": "seeded"})
    assert default.status_code == 200 and seeded.status_code == 200, seeded.text
    assert default.headers["x-base"] == "default" and seeded.headers["x-base"] == "seeded"
    assert seeded.headers["x-model-version"] == versions[0]
    assert not np.array_equal(_frames(seeded.content), _frames(default.content))


def test_replica_keeps_the_least_recently_used_models_only(server):
    """With room for N models, an (N+1)-th evicts the least recently used (not the oldest
    loaded): X-Model-Loaded says whether the replica loaded the model for that request."""
    _, cfg, versions, client = server
    room = cfg.serve.max_models_per_replica
    ids = [(v, base) for base in ("default", "seeded") for v in versions]
    assert 2 <= room < len(ids)
    ids = ids[: room + 1]

    def loaded(version: str, base: str) -> bool:
        body = {"prompt": "lru", "seed": 1, "num_frames": 2, "model": version, "base": base}
        response = client.post("/v1/generate", json=body)
        assert response.status_code == 200, response.text
        assert response.headers["x-model-version"] == version
        flag = response.headers["x-model-loaded"]
        assert ("load;dur=" in response.headers["server-timing"]) == (flag == "1")
        return flag == "1"

    for model in ids[:room]:  # fill the replica (some may already be there)
        loaded(*model)
    assert not loaded(*ids[0])  # cached; now the most recently used, ids[1] the least
    assert loaded(*ids[room])  # new: evicts ids[1]
    assert not loaded(*ids[0])
    assert loaded(*ids[1])  # evicted, so loaded again


def test_alias_move_reaches_new_requests_without_restart(server):
    _, cfg, versions, client = server
    from tracking.runs import client as mlflow_client
    from tracking.runs import resolve_tracking_uri

    registry = mlflow_client(resolve_tracking_uri(cfg.mlflow))
    name = cfg.mlflow.registered_model
    request = {"prompt": "a cat", "seed": 5, "num_frames": 2}
    assert client.post("/v1/generate", json=request).headers["x-model-version"] == versions[0]
    registry.set_registered_model_alias(name, "champion", versions[1])
    try:
        deadline = time.monotonic() + 10
        while True:
            version = client.post("/v1/generate", json=request).headers["x-model-version"]
            if version == versions[1] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert version == versions[1]
    finally:
        registry.set_registered_model_alias(name, "champion", versions[0])
        time.sleep(cfg.serve.alias_ttl_s + 0.1)  # later tests see the original alias


async def _burst(url: str, bodies: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        return await asyncio.gather(*(client.post("/v1/generate", json=b) for b in bodies))


def test_concurrent_compatible_requests_are_batched(server):
    """A batch closes when it is full or when ``serve.batch_wait_timeout_s`` has passed since
    its first request. With a window far longer than any spread of arrival, ``max_batch_size``
    compatible requests sent together always make one batch, and the full batch starts at once.
    (Holding the replica busy would not do: Ray Serve forms each batch as its requests arrive
    and queues whole batches behind a running one.) An app of its own: the session's app waits
    0 s, so that a lone request never waits for company."""
    from ray import serve

    from serving.app import build_app

    url, cfg, versions, _ = server
    batching = load_config(
        ROOT / "configs/tiny.yaml",
        [
            f"mlflow.tracking_uri={cfg.mlflow.tracking_uri}",
            "serve.app_name=batching",
            "serve.batch_wait_timeout_s=30",
            "serve.max_batch_size=4",
            "serve.max_ongoing_requests=4",
        ],
    )
    serve.run(build_app(batching), name="batching", route_prefix="/batching", blocking=False)
    try:
        bodies = [
            {"prompt": f"clip {i}", "seed": i, "num_frames": 4, "model": versions[0]}
            for i in range(4)
        ]
        responses = asyncio.run(_burst(url + "/batching", bodies))
    finally:
        serve.delete("batching")
    assert [r.status_code for r in responses] == [200] * 4, [r.text for r in responses]
    assert [r.headers["x-batch-size"] for r in responses] == ["4"] * 4
    # Batching does not change results beyond float rounding (batched matmuls sum in another
    # order; the GIF palette may then shift a little): each seed gives what it gives alone.
    alone = _frames(httpx.post(url + "/v1/generate", json=bodies[2], timeout=120).content)
    batched = [_frames(r.content).astype(float) for r in responses]
    assert np.abs(batched[2] - alone).mean() < 2.0
    assert np.abs(batched[1] - alone).mean() > 4 * np.abs(batched[2] - alone).mean()


def test_overload_answers_503_quickly_and_nothing_else(server):
    url, cfg, _, _ = server
    s = cfg.serve
    capacity = s.max_ongoing_requests + s.max_queued_requests
    bodies = [{"prompt": f"p{i}", "seed": i, "num_frames": 8} for i in range(4 * capacity)]
    responses = asyncio.run(_burst(url, bodies))
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 503}, [
        (r.status_code, r.text[:300]) for r in responses if r.status_code not in (200, 503)
    ]
    assert codes.count(200) >= s.max_ongoing_requests and codes.count(503) >= capacity, codes
    # Refused by the app itself (JSON, Retry-After), never by Serve's proxy (plain text, no
    # Retry-After), which once answered about half of them.
    for response in (r for r in responses if r.status_code == 503):
        assert response.headers.get("retry-after") == "1", response.text
        assert "over capacity" in response.json()["error"]
    # Refused at once, not after waiting in a queue: each 503 within 2 s of its request (the
    # 200s each wait for whole generations before them).
    refused_s = [r.elapsed.total_seconds() for r in responses if r.status_code == 503]
    assert max(refused_s) < 2.0, sorted(refused_s)


def test_bearer_token_auth_when_configured(ray_cluster, server):
    """A second app on the same Serve instance with a token: /v1/* need it, /healthz does not."""
    from ray import serve

    from serving.app import build_app

    url, cfg, _, _ = server
    token = "s3cret-token-for-tests"
    secured = load_config(
        ROOT / "configs/tiny.yaml",
        [
            f"mlflow.tracking_uri={cfg.mlflow.tracking_uri}",
            f"serve.auth_token={token}",
            "serve.app_name=secured",
        ],
    )
    serve.run(build_app(secured), name="secured", route_prefix="/secured", blocking=False)
    try:
        base = url + "/secured"
        assert httpx.get(base + "/healthz", timeout=60).status_code == 200
        denied = httpx.get(base + "/v1/models", timeout=60)
        assert (
            denied.status_code == 401 and denied.json()["detail"][0]["loc"][-1] == "authorization"
        )
        wrong = httpx.get(base + "/v1/models", headers={"Authorization": "Bearer nope"}, timeout=60)
        assert wrong.status_code == 401
        ok = httpx.get(
            base + "/v1/models", headers={"Authorization": f"Bearer {token}"}, timeout=60
        )
        assert ok.status_code == 200 and ok.json()["versions"]
        refused = httpx.post(base + "/v1/generate", json={"prompt": "a"}, timeout=60)
        assert refused.status_code == 401
    finally:
        serve.delete("secured")


def test_autoscaling_settings_reach_the_generator_deployment(server):
    """``serve.autoscaling.*`` become the generator deployment's ``autoscaling_config`` as
    Serve's controller holds it (what the dashboard's REST API reports); equal ``min_replicas``
    and ``max_replicas`` fix the replica count instead."""
    from ray import serve
    from ray.serve.context import _get_global_client

    from serving.app import build_app

    url, cfg, _, _ = server
    scaled = load_config(
        ROOT / "configs/tiny.yaml",
        [
            f"mlflow.tracking_uri={cfg.mlflow.tracking_uri}",
            "serve.app_name=scaled",
            "serve.autoscaling.min_replicas=1",
            "serve.autoscaling.max_replicas=3",
            "serve.autoscaling.target_ongoing_requests=3",
            "serve.autoscaling.upscale_delay_s=7",
            "serve.autoscaling.downscale_delay_s=70",
        ],
    )
    serve.run(build_app(scaled), name="scaled", route_prefix="/scaled", blocking=False)
    try:
        assert httpx.get(url + "/scaled/healthz", timeout=60).status_code == 200
        applications = _get_global_client().get_serve_details()["applications"]

        def generator(app: str) -> dict:
            return applications[app]["deployments"]["VideoGenerator"]["deployment_config"]

        autoscaling = generator("scaled")["autoscaling_config"]
        assert {
            key: autoscaling[key]
            for key in (
                "min_replicas",
                "max_replicas",
                "target_ongoing_requests",
                "upscale_delay_s",
                "downscale_delay_s",
            )
        } == {
            "min_replicas": 1,
            "max_replicas": 3,
            "target_ongoing_requests": 3,
            "upscale_delay_s": 7,
            "downscale_delay_s": 70,
        }
        fixed = generator(cfg.serve.app_name)
        assert fixed["num_replicas"] == 1 and not fixed.get("autoscaling_config"), fixed
    finally:
        serve.delete("scaled")


def test_web_page_in_headless_chromium(server, tmp_path):
    """Drive the page like a person: models load, Generate shows the animation, errors are
    readable. Keeps screenshots (also copied to outputs/)."""
    if shutil.which("chromium") is None or shutil.which("chromedriver") is None:
        pytest.skip(
            "Debian chromium + chromium-driver are not installed (`make test` installs them)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    url, _, versions, _ = server
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1100,800",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    shots = []
    try:
        driver.get(url + "/")
        wait = WebDriverWait(driver, 60)
        wait.until(
            lambda d: len(Select(d.find_element(By.ID, "model")).options) == 1 + len(versions)
        )
        labels = [o.text for o in Select(driver.find_element(By.ID, "model")).options]
        assert any("@champion" in label for label in labels), labels
        driver.find_element(By.ID, "prompt").send_keys("a lighthouse in a storm")
        for field, value in (("num_frames", "6"), ("num_inference_steps", "3"), ("seed", "7")):
            element = driver.find_element(By.ID, field)
            element.clear()
            element.send_keys(value)
        driver.find_element(By.ID, "generate").click()
        wait.until(ec.visibility_of_element_located((By.ID, "result")))
        wait.until(
            lambda d: d.execute_script(
                "const i = document.getElementById('video-img'); return i.complete && i.naturalWidth > 0"
            )
        )
        meta = driver.find_element(By.ID, "meta").text
        assert "seed    7" in meta and f"v{versions[0]}" in meta, meta
        assert "loras" not in meta

        lora = driver.find_element(By.CSS_SELECTOR, "#motion_loras .lora-use")
        assert lora.get_attribute("data-name") == "zoom_in"
        assert "zoom_in v1" in driver.find_element(By.ID, "motion_loras").text
        lora.click()
        scale = driver.find_element(By.CSS_SELECTOR, "#motion_loras .lora-scale")
        scale.clear()
        scale.send_keys("0.5")
        driver.find_element(By.ID, "generate").click()
        wait.until(lambda d: "loras   zoom_in:1@0.5" in d.find_element(By.ID, "meta").text)
        lora.click()  # off again for the next check
        shots.append(tmp_path / "serve_web_generate.png")
        driver.save_screenshot(str(shots[-1]))

        driver.find_element(By.ID, "prompt").clear()
        driver.find_element(By.ID, "generate").click()
        error = wait.until(ec.visibility_of_element_located((By.ID, "error")))
        assert "422" in error.text and "prompt: must not be empty" in error.text, error.text
        shots.append(tmp_path / "serve_web_error.png")
        driver.save_screenshot(str(shots[-1]))
    finally:
        driver.quit()
    for shot in shots:
        assert shot.stat().st_size > 10_000
        (ROOT / "outputs").mkdir(exist_ok=True)
        shutil.copy(shot, ROOT / "outputs" / shot.name)
