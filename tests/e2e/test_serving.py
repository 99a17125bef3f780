"""The HTTP API on a real local Ray Serve, serving versions from a real SQLite MLflow registry.

One Serve application per module, deployed from serve/config.yaml the way `serve run`
applies it (HTTP on a free loopback port); Serve is shut down at the end of the module.
"""

from __future__ import annotations

import base64
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
import yaml
from helpers import free_port
from PIL import Image

from changeseg import tracking
from changeseg.config import ServeSection, build_config
from changeseg.inference import Predictor
from changeseg.inference.regions import summarize_mask
from changeseg.models import create_model
from changeseg.models.weights import save_checkpoint
from changeseg.serving.catalog import ModelCatalog
from changeseg.serving.inputs import RequestError, match_sizes

ROOT = Path(__file__).resolve().parents[2]
TINY = {"backbone": "resnet18", "msf_width": 16, "msf_scales": 1, "head": "fcn"}
TTL_S = 0.5


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def from_b64_png(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))


def pair(seed: int, size=(48, 64)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t0 = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    t1 = t0.copy()
    t1[10:30, 20:50] = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    return t0, t1


def register_versions(tmp: Path, tracking_uri: str) -> None:
    """Version 1 (F1 0.5, champion) and version 2 (F1 0.4) with different weights."""
    for seed, f1 in [(1, 0.5), (2, 0.4)]:
        cfg = build_config({"run": {"name": f"serve{seed}"}, "tracking": {"tracking_uri": tracking_uri}, "model": TINY})
        torch.manual_seed(seed)
        directory = save_checkpoint(tmp / f"ckpt{seed}", create_model(**TINY), metadata={"seed": seed})
        run = tracking.start_or_resume_run(cfg)
        tracking.log_and_register_model(cfg, run_id=run.run_id, checkpoint_dir=directory, metrics={"val_global_f1": f1})


@pytest.fixture(scope="module")
def service(ray_local, tmp_path_factory):
    """Serve deployed from serve/config.yaml; the two versions are registered while it starts."""
    from changeseg.serving import local

    tmp = tmp_path_factory.mktemp("serving")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    args = {
        "tracking": {"tracking_uri": uri},
        "serve": {
            "alias_ttl_s": TTL_S,
            "max_body_bytes": 200_000,
            "max_pixels": 256 * 256,
            "allowed_uri_prefixes": [str(tmp / "images")],
        },
    }
    config = local.load_deploy_config(ROOT / "serve" / "config.yaml", port=free_port(), args=args)
    try:
        url = local.deploy(config, wait=False)
        register_versions(tmp, uri)
        predictors = {v: Predictor.from_uri(f"models:/changeseg/{v}", tracking_uri=uri) for v in (1, 2)}
        local.wait_running({local.APP_NAME}, timeout_s=180)
        yield {"url": url, "uri": uri, "tmp": tmp, "predictors": predictors, "args": args}
    finally:
        local.shutdown()


@pytest.fixture
def server(service):
    return service["url"]


@pytest.fixture
def registry(service):
    return service


def detect(url: str, t0: bytes, t1: bytes, **fields) -> requests.Response:
    files = {"t0": ("t0.png", t0, "image/png"), "t1": ("t1.png", t1, "image/png")}
    return requests.post(f"{url}/v1/detect", files=files, data=fields, timeout=60)


def assert_error(response: requests.Response, status: int, code: str, text: str = "") -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["status"] == status and error["code"] == code, error
    assert text in error["message"]


# --- without Serve -------------------------------------------------------------------


def test_serve_config_files_are_valid_deploy_configs():
    from ray.serve._private.utils import import_attr
    from ray.serve.schema import ServeDeploySchema

    for name, gpus in [("config.yaml", 0), ("config.gpu.yaml", 1)]:
        data = yaml.safe_load((ROOT / "serve" / name).read_text())
        schema = ServeDeploySchema.model_validate(data)
        assert schema.http_options.host == "127.0.0.1"
        app = schema.applications[0]
        # The application's args are a valid changeseg config.
        build_config(app.args)
        options = {d.name: d for d in app.deployments}
        assert options["ChangeModel"].ray_actor_options.num_gpus == gpus
        assert (
            options["ChangeModel"].autoscaling_config["max_replicas"]
            >= options["ChangeModel"].autoscaling_config["min_replicas"]
            >= 1
        )
        assert options["ChangeModel"].max_queued_requests > 0 and options["ChangeAPI"].max_queued_requests > 0
    builder = import_attr("serve.app:app")
    application = builder({"tracking": {"tracking_uri": "sqlite:////nonexistent/mlflow.db"}})
    assert type(application).__name__ == "Application"
    with pytest.raises(Exception, match="unknown key 'serve.max_batch'"):
        builder({"serve": {"max_batch": 4}})


def test_catalog_resolves_aliases_with_a_ttl(registry):
    uri = registry["uri"]
    now = [0.0]
    catalog = ModelCatalog(tracking_uri=uri, name="changeseg", ttl_s=5.0, clock=lambda: now[0])
    assert catalog.resolve("champion") == 1 and catalog.resolve("2") == 2
    client = tracking.client_for(uri)
    client.set_registered_model_alias("changeseg", "champion", "2")
    try:
        now[0] = 4.9
        assert catalog.resolve("champion") == 1  # cached
        now[0] = 5.1
        assert catalog.resolve("champion") == 2
        listing = catalog.listing()
    finally:
        client.set_registered_model_alias("changeseg", "champion", "1")
    assert listing["aliases"] == {"champion": 2}
    assert [(v["version"], v["aliases"]) for v in listing["versions"]] == [(1, []), (2, ["champion"])]
    for reference, status in [("7", 404), ("nobody", 404), ("../x", 422), ("\uff11", 422), ("1" * 65, 422)]:
        with pytest.raises(RequestError) as err:
            catalog.resolve(reference)
        assert err.value.status == status
    # Spellings of one number are one cache entry; misses are cached too, and the cache is bounded.
    bounded = ModelCatalog(tracking_uri=uri, name="changeseg", ttl_s=5.0, max_entries=4, clock=lambda: now[0])
    assert bounded.resolve("0001") == bounded.resolve("1") == 1 and bounded.cache_size() == 1
    for k in range(10):
        with pytest.raises(RequestError):
            bounded.resolve(f"missing{k}")
    assert bounded.cache_size() == 4
    client.set_registered_model_alias("changeseg", "missing9", "2")
    try:
        with pytest.raises(RequestError, match="missing9"):  # the miss is remembered for the TTL
            bounded.resolve("missing9")
        now[0] += 5.1
        assert bounded.resolve("missing9") == 2
    finally:
        client.delete_registered_model_alias("changeseg", "missing9")


def test_an_unreachable_or_stalled_registry_is_503_within_the_deadline(monkeypatch):
    import socket

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    with socket.socket() as stalled:  # accepts connections, never answers
        stalled.bind(("127.0.0.1", 0))
        stalled.listen(8)
        for uri in (f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{stalled.getsockname()[1]}"):
            catalog = ModelCatalog(tracking_uri=uri, name="changeseg", ttl_s=5.0, timeout_s=1.0)
            for call in (lambda: catalog.resolve("champion"), catalog.listing):
                start = time.perf_counter()
                with pytest.raises(RequestError) as err:
                    call()
                assert err.value.status == 503 and err.value.code == "registry_unavailable", err.value.message
                assert time.perf_counter() - start < 2.5
            assert catalog.cache_size() == 0  # an outage is not remembered as a miss


def _api(**serve):
    """ChangeAPI's own class outside Serve (its handler methods, no replica)."""
    from changeseg.serving.app import ChangeAPI

    cls = ChangeAPI.func_or_class.__mro__[1]
    api = cls.__new__(cls)
    cls.__init__(api, None, {"tracking": {"tracking_uri": "sqlite:///unused.db"}, "serve": serve})
    return api


def test_the_handler_deadline_covers_reading_the_body():
    import asyncio

    from starlette.requests import Request

    api = _api(request_timeout_s=0.3)

    async def stalled():
        await asyncio.sleep(30)
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/detect",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"100")],
    }
    start = time.perf_counter()
    with pytest.raises(RequestError) as err:
        asyncio.run(api.detect(Request(scope, stalled)))
    assert err.value.status == 504 and time.perf_counter() - start < 2


def test_deep_json_and_control_characters_in_uris_are_client_errors():
    api = _api(allowed_uri_prefixes=["/tmp"])
    for body in [b"[" * 100_000, b'{"t0": ' + b"[" * 5000 + b"]" * 5000 + b', "t1": {"data": ""}}']:
        with pytest.raises(RequestError) as err:
            api._parse_json(body)
        assert err.value.status == 422 and err.value.code in ("bad_json", "invalid_request")
    body = json.dumps({"t0": {"uri": "/tmp/a\u0000.png"}, "t1": {"data": ""}}).encode()
    with pytest.raises(RequestError) as err:
        api._parse_json(body)
    assert (err.value.status, err.value.code) == (422, "bad_uri")


def test_size_mismatch_policies():
    t0, t1 = np.zeros((20, 30, 3), np.uint8), np.full((10, 15, 3), 200, np.uint8)
    assert match_sizes(t0, t1, policy="resize").shape == (20, 30, 3)
    assert (match_sizes(t0, t1, policy="resize") == 200).all()
    with pytest.raises(RequestError, match="t0 is 30x20 but t1 is 15x10"):
        match_sizes(t0, t1, policy="reject")
    assert ServeSection().size_mismatch == "reject"


# --- over HTTP -----------------------------------------------------------------------


def test_health_readiness_and_openapi(server):
    assert requests.get(f"{server}/healthz", timeout=10).json() == {"status": "ok"}
    ready = requests.get(f"{server}/readyz", timeout=60)
    assert ready.status_code == 200, ready.text
    assert ready.json()["version"] == 1
    spec = requests.get(f"{server}/openapi.json", timeout=10).json()
    body = spec["paths"]["/v1/detect"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "application/json"}
    assert set(body["multipart/form-data"]["schema"]["required"]) == {"t0", "t1"}
    json_body = spec["components"]["schemas"][body["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]]
    assert set(json_body["required"]) == {"t0", "t1"}
    assert json_body["properties"]["t0"]["$ref"].rsplit("/", 1)[1] in spec["components"]["schemas"]
    assert {"/v1/models", "/healthz", "/readyz"} <= set(spec["paths"])
    assert "413" in spec["paths"]["/v1/detect"]["post"]["responses"]


def test_detect_multipart_matches_the_model(server, registry):
    t0, t1 = pair(0)
    response = detect(server, png(t0), png(t1), probabilities="true", overlay="true")
    assert response.status_code == 200, response.text
    out = response.json()
    assert out["model"] == {"name": "changeseg", "version": 1, "requested": "champion"}
    predictor = registry["predictors"][1]
    proba = predictor.predict_proba(t0, t1)[0]
    mask = from_b64_png(out["mask_png"])
    np.testing.assert_array_equal(mask, proba.argmax(0))
    change = from_b64_png(out["change_probability_png"]).astype(np.float64) / 65535
    np.testing.assert_allclose(change, 1 - proba[0], atol=1e-4)
    assert out["summary"] == summarize_mask(mask, ignore_index=None)
    assert from_b64_png(out["overlay_png"]).shape == (48, 3 * 64 + 8, 3)
    assert set(out["timings_ms"]) == {"decode", "model", "inference", "postprocess", "total"}
    assert out["timings_ms"]["total"] >= out["timings_ms"]["inference"] > 0


def test_detect_json_with_base64_uri_and_a_version(server, registry):
    t0, t1 = pair(1)
    folder = registry["tmp"] / "images"
    folder.mkdir(exist_ok=True)
    (folder / "t1.png").write_bytes(png(t1))
    body = {"t0": {"data": base64.b64encode(png(t0)).decode()}, "t1": {"uri": str(folder / "t1.png")}, "version": "2"}
    response = requests.post(f"{server}/v1/detect", json=body, timeout=60)
    assert response.status_code == 200, response.text
    out = response.json()
    assert out["model"]["version"] == 2 and out["change_probability_png"] is None and out["overlay_png"] is None
    np.testing.assert_array_equal(from_b64_png(out["mask_png"]), registry["predictors"][2].predict(t0, t1)[0])


def test_models_lists_versions_and_aliases(server):
    out = requests.get(f"{server}/v1/models", timeout=10).json()
    assert out["name"] == "changeseg" and out["default"] == "champion"
    assert out["aliases"] == {"champion": 1}
    assert [v["version"] for v in out["versions"]] == [1, 2]


def test_bad_input_gets_a_clear_4xx_and_the_service_stays_up(server, registry):
    t0, t1 = pair(2)
    good = png(t0)
    outside = registry["tmp"] / "secret.png"
    outside.write_bytes(good)
    cases = [
        (detect(server, b"definitely not an image", good), 422, "not_an_image", "t0"),
        (detect(server, good, good[: len(good) // 2]), 422, "corrupt_image", "t1"),
        # A 2000x2000 PNG of zeros is a few kB but 4 Mpixel: over max_pixels (65536).
        (detect(server, png(np.zeros((2000, 2000, 3), np.uint8)), good), 413, "image_too_large", "2000x2000"),
        (detect(server, good, png(t1[:40])), 422, "size_mismatch", "t0 is 64x48 but t1 is 64x40"),
        (
            detect(server, png(np.random.default_rng(0).integers(0, 256, (300, 300, 3), np.uint8)), good),
            413,
            "body_too_large",
            "",
        ),
        (detect(server, good, good, version="9"), 404, "unknown_version", "'9'"),
        (detect(server, good, good, version="no-such-alias"), 404, "unknown_version", "no-such-alias"),
        (detect(server, good, good, version="\uff11"), 422, "bad_version", ""),
        (
            requests.post(
                f"{server}/v1/detect", data=b"[" * 100_000, headers={"content-type": "application/json"}, timeout=30
            ),
            422,
            "bad_json",
            "deeply",
        ),
        (
            requests.post(f"{server}/v1/detect", json={"t0": {"uri": "/a\u0000b"}, "t1": {"data": "AAAA"}}, timeout=30),
            422,
            "bad_uri",
            "t0",
        ),
        (requests.post(f"{server}/v1/detect", files={"t0": ("a.png", good)}, timeout=30), 422, "missing_field", "t1"),
        (requests.post(f"{server}/v1/detect", json={"t0": {"data": "AAAA"}}, timeout=30), 422, "invalid_request", "t1"),
        (
            requests.post(f"{server}/v1/detect", json={"t0": {"data": "%%%"}, "t1": {"data": "AAAA"}}, timeout=30),
            422,
            "bad_base64",
            "t0",
        ),
        (
            requests.post(
                f"{server}/v1/detect", json={"t0": {"uri": str(outside)}, "t1": {"data": "AAAA"}}, timeout=30
            ),
            403,
            "uri_not_allowed",
            "t0",
        ),
        (
            requests.post(f"{server}/v1/detect", data=b"{", headers={"content-type": "application/json"}, timeout=30),
            422,
            "bad_json",
            "",
        ),
        (
            requests.post(f"{server}/v1/detect", data=good, headers={"content-type": "image/png"}, timeout=30),
            415,
            "unsupported_media_type",
            "",
        ),
    ]
    for response, status, code, text in cases:
        assert_error(response, status, code, text)
    # Nothing above took a replica down; "0001" is version 1.
    assert detect(server, good, png(t1)).status_code == 200
    assert detect(server, good, png(t1), version="0001").json()["model"]["version"] == 1


def test_moved_champion_alias_is_picked_up_without_restart(server, registry):
    t0, t1 = pair(3)
    client = tracking.client_for(registry["uri"])
    assert detect(server, png(t0), png(t1)).json()["model"]["version"] == 1
    client.set_registered_model_alias("changeseg", "champion", "2")
    try:
        time.sleep(TTL_S + 0.2)
        out = detect(server, png(t0), png(t1)).json()
        assert out["model"] == {"name": "changeseg", "version": 2, "requested": "champion"}
        np.testing.assert_array_equal(from_b64_png(out["mask_png"]), registry["predictors"][2].predict(t0, t1)[0])
    finally:
        client.set_registered_model_alias("changeseg", "champion", "1")


@pytest.mark.slow
def test_load_100_requests_16_at_a_time_has_no_5xx(server):
    t0, t1 = pair(4, size=(64, 64))
    files_t0, files_t1 = png(t0), png(t1)

    def one(_):
        response = detect(server, files_t0, files_t1)
        return response.status_code, response.json().get("batch_size", 0) if response.ok else 0

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(100)))
    statuses = [s for s, _ in results]
    assert sum(s >= 500 for s in statuses) == 0
    assert statuses.count(200) == 100
    # Concurrent requests were served in shared forward passes.
    assert max(b for _, b in results) > 1


@pytest.mark.slow
def test_full_model_queue_answers_503_not_500(service):
    """Last in the module: shrinks the model deployment's queue (an in-place update)."""
    from changeseg.serving import local

    config = local.load_deploy_config(
        ROOT / "serve" / "config.yaml",
        port=int(service["url"].rsplit(":", 1)[1]),
        args=service["args"],
        deployments={"ChangeModel": {"max_ongoing_requests": 1, "max_queued_requests": 1}},
    )
    local.deploy(config, timeout_s=120)
    t0, t1 = pair(5, size=(64, 64))
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda _: detect(service["url"], png(t0), png(t1)), range(48)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503} and 200 in statuses and 503 in statuses, statuses
    assert_error(next(r for r in responses if r.status_code == 503), 503, "overloaded")
