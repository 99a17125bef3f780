"""The HTTP ingress deployment: ``ChangeAPI`` parses and validates requests, resolves the
requested version or alias to a concrete registry version, calls the model deployment
multiplexed by that version and turns the class mask into PNGs and a region summary.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from ray import serve
from ray.serve.exceptions import BackPressureError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from changeseg.config import build_config
from changeseg.data.decode import encode_png
from changeseg.data.raster import raster_options
from changeseg.inference.regions import summarize_mask
from changeseg.serving.inputs import (
    BandMismatch,
    RequestError,
    decode_base64,
    decode_request_pair,
    header_pixels,
    parse_flag,
    parse_threshold,
    read_uri,
)
from changeseg.serving.schema import (
    ERRORS,
    MULTIPART_SCHEMA,
    DetectJSON,
    DetectResponse,
    ErrorResponse,
    ImageRef,
    error_response,
    short_reason,
)
from changeseg.viz import overlay_panel

__all__ = ["API_DEPLOYMENT", "ChangeAPI", "api"]

log = logging.getLogger(__name__)

API_DEPLOYMENT = "ChangeAPI"
# Requests this small (bytes, and pixels per image from the headers) are handled
# without thread hops.
_INLINE_BYTES = 256 * 1024
_INLINE_PIXELS = 256 * 256

api = FastAPI(
    title="changeseg",
    version="1",
    description="Pixel-wise change detection between two images of the same scene, "
    "served from versions of the MLflow-registered model.",
)


def _openapi() -> dict:
    """FastAPI's schema plus the JSON request body's models, which no endpoint parameter
    declares (the body is read by hand to enforce the size limit first)."""
    if api.openapi_schema is None:
        schema = get_openapi(title=api.title, version=api.version, description=api.description, routes=api.routes)
        request = DetectJSON.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(request.pop("$defs", {}))
        components["DetectJSON"] = request
        api.openapi_schema = schema
    return api.openapi_schema


api.openapi = _openapi


@api.exception_handler(RequestError)
async def _request_error(_request: Request, err: RequestError):
    return error_response(err)


@api.exception_handler(RequestValidationError)
async def _validation_error(_request: Request, err: RequestValidationError):
    return error_response(RequestError(422, "invalid_request", str(err.errors())))


@api.exception_handler(StarletteHTTPException)
async def _http_error(_request: Request, err: StarletteHTTPException):
    return error_response(RequestError(err.status_code, "http_error", str(err.detail)))


@api.exception_handler(Exception)
async def _unexpected_error(_request: Request, err: Exception):
    log.exception("unexpected error serving a request")
    return error_response(RequestError(500, "internal_error", f"{type(err).__name__}: the request could not be served"))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _png(array: np.ndarray) -> bytes:
    return encode_png(array)


async def _read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it is known to be over ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, "body_too_large", f"the body is {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, "body_too_large", f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _awaitable(response):
    """A handle response as a coroutine, so asyncio.wait_for can bound it."""
    return await response


@dataclass
class _Fields:
    t0: bytes
    t1: bytes
    version: str | None
    probabilities: bool
    overlay: bool
    threshold: float | None = None


@serve.deployment(name=API_DEPLOYMENT)
@serve.ingress(api)
class ChangeAPI:
    """HTTP ingress: validation, version resolution, post-processing."""

    def __init__(self, model, config: dict[str, Any]):
        from changeseg.serving.catalog import (
            ModelCatalog,  # lazy: MLflow takes seconds; only a running ingress needs it
        )

        self.cfg = build_config(config)
        self.settings = self.cfg.serve
        self.model = model
        self.catalog = ModelCatalog(
            tracking_uri=self.cfg.resolved_tracking_uri(),
            name=self.cfg.tracking.registered_model,
            ttl_s=self.settings.alias_ttl_s,
            timeout_s=self.settings.registry_timeout_s,
        )
        self.default_version = self.settings.default_version or self.cfg.tracking.alias
        # GeoTIFF inputs: the bands and scaling the served models were trained with.
        self.raster = raster_options(self.cfg.data)
        self.rgb_positions = self.cfg.data.rgb_positions()
        self._warm_up()

    def _warm_up(self) -> None:
        """Decode and post-process a tiny pair once, so lazy imports and codec set-up
        are not paid by the first request."""
        tiny = _png(np.zeros((self.settings.min_side, self.settings.min_side, 3), np.uint8))
        t0, t1 = self._decode(_Fields(tiny, tiny, None, True, True))
        fake = {"mask": np.zeros(t0.shape[:2], np.uint8), "change_probability": np.zeros(t0.shape[:2], np.float32)}
        self._postprocess(t0, t1, fake, _Fields(tiny, tiny, None, True, True))

    @api.get("/healthz", summary="liveness: the API process answers")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get(
        "/readyz",
        summary="readiness: the default version resolves and its model is loaded",
        responses={503: {"model": ErrorResponse}},
    )
    async def readyz(self):
        try:
            version = await self.catalog.resolve_async(self.default_version)
            handle = self.model.options(multiplexed_model_id=str(version))
            await asyncio.wait_for(_awaitable(handle.ready.remote()), self.settings.request_timeout_s)
        except Exception as err:  # any failure means not ready; a short reason goes back, never a remote traceback
            log.warning("not ready: %s", err)
            return error_response(RequestError(503, "not_ready", short_reason(err)))
        return {"status": "ready", "default": self.default_version, "version": version}

    @api.get("/v1/models", summary="servable registry versions and aliases")
    async def models(self) -> dict:
        listing = await self.catalog.call_async(self.catalog._listing)
        return {**listing, "default": self.default_version}

    @api.post(
        "/v1/detect",
        summary="change mask of an image pair",
        response_model=DetectResponse,
        responses=ERRORS,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {"schema": MULTIPART_SCHEMA},
                    "application/json": {"schema": {"$ref": "#/components/schemas/DetectJSON"}},
                },
            }
        },
    )
    async def detect(self, request: Request):
        # One deadline for the whole handler, body reading included: a slow client or a
        # client-chosen proxy timeout (x-request-timeout-seconds) cannot hold it longer.
        try:
            return await asyncio.wait_for(self._detect(request), self.settings.request_timeout_s)
        except TimeoutError:
            raise RequestError(
                504, "timeout", f"the request was not served within {self.settings.request_timeout_s} s"
            ) from None

    async def _detect(self, request: Request):
        started = time.perf_counter()
        body = await _read_body(request, self.settings.max_body_bytes)
        fields = await self._parse(request, body)
        requested = fields.version or self.default_version
        version = self.catalog.cached(requested) or await self.catalog.resolve_async(requested)
        # Small images are decoded and post-processed on the event loop: a thread hop
        # would cost more than the work. Large ones go to a thread to keep the loop free.
        small = len(body) <= _INLINE_BYTES and max(header_pixels(fields.t0), header_pixels(fields.t1)) <= _INLINE_PIXELS
        t0, t1 = self._decode(fields) if small else await asyncio.to_thread(self._decode, fields)
        decoded = time.perf_counter()
        result = await self._call_model(version, t0, t1, fields.probabilities, fields.threshold)
        inferred = time.perf_counter()

        if small:
            payload = self._postprocess(t0, t1, result, fields)
        else:
            payload = await asyncio.to_thread(self._postprocess, t0, t1, result, fields)
        finished = time.perf_counter()
        payload["model"] = {"name": self.catalog.name, "version": version, "requested": requested}
        payload["batch_size"] = result["batch_size"]
        payload["threshold"] = result.get("threshold")
        payload["timings_ms"] = {
            "decode": round(1000 * (decoded - started), 3),
            "model": round(1000 * (inferred - decoded), 3),
            "inference": round(result["inference_ms"], 3),
            "postprocess": round(1000 * (finished - inferred), 3),
            "total": round(1000 * (finished - started), 3),
        }
        return JSONResponse(payload)

    async def _call_model(
        self, version: int, t0: np.ndarray, t1: np.ndarray, probabilities: bool, threshold: float | None = None
    ) -> dict:
        handle = self.model.options(multiplexed_model_id=str(version))
        call = handle.predict.remote(t0, t1, probabilities, threshold)
        try:
            return await asyncio.wait_for(_awaitable(call), self.settings.request_timeout_s)
        except (TimeoutError, asyncio.CancelledError) as err:
            call.cancel()
            if isinstance(err, asyncio.CancelledError):
                raise
            raise RequestError(504, "timeout", f"no result within {self.settings.request_timeout_s} s") from None
        except BackPressureError:
            raise RequestError(503, "overloaded", "the model replicas' queues are full; retry later") from None
        except LookupError as err:  # the version vanished between resolution and loading
            raise RequestError(404, "unknown_version", str(err).splitlines()[-1][:200]) from None
        except BandMismatch as err:  # raised in the model replica: the cause carries the message
            raise RequestError(422, "band_mismatch", str(getattr(err, "cause", err))[:300]) from None

    async def _parse(self, request: Request, body: bytes) -> _Fields:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            return await self._parse_multipart(request, body)
        if ctype == "application/json":
            return await asyncio.to_thread(self._parse_json, body)
        raise RequestError(
            415, "unsupported_media_type", "send multipart/form-data (fields t0, t1) or application/json"
        )

    async def _parse_multipart(self, request: Request, body: bytes) -> _Fields:
        async def replay():
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(
                max_files=2, max_fields=8, max_part_size=self.settings.max_body_bytes
            )
        except Exception as err:  # the multipart parser's own errors: malformed bodies
            raise RequestError(
                422, "bad_multipart", f"the multipart body could not be parsed: {getattr(err, 'detail', err)}"
            ) from None
        images = {}
        for name in ("t0", "t1"):
            item = form.get(name)
            if item is None:
                raise RequestError(422, "missing_field", f"multipart field {name} (an image file) is missing")
            if not isinstance(item, UploadFile):
                raise RequestError(422, "bad_field", f"multipart field {name} must be a file, not a text value")
            images[name] = await item.read()
        version = form.get("version")
        return _Fields(
            t0=images["t0"],
            t1=images["t1"],
            version=str(version) if version else None,
            probabilities=parse_flag(form.get("probabilities", False), field="probabilities"),
            overlay=parse_flag(form.get("overlay", False), field="overlay"),
            threshold=parse_threshold(form.get("threshold")),
        )

    def _parse_json(self, body: bytes) -> _Fields:
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RequestError(422, "bad_json", f"the body is not valid JSON: {err}") from None
        except RecursionError:
            raise RequestError(422, "bad_json", "the JSON body is nested too deeply") from None
        try:
            parsed = DetectJSON.model_validate(data)
        except RecursionError:
            raise RequestError(422, "invalid_request", "the JSON body is nested too deeply") from None
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in err.errors())
            raise RequestError(422, "invalid_request", problems) from None
        images = {}
        for name in ("t0", "t1"):
            ref: ImageRef = getattr(parsed, name)
            if ref.data is not None:
                images[name] = decode_base64(ref.data, field=name)
            else:
                images[name] = read_uri(ref.uri, field=name, settings=self.settings, storage_options=self.cfg.storage)
        return _Fields(
            images["t0"], images["t1"], parsed.version, parsed.probabilities, parsed.overlay, parsed.threshold
        )

    def _decode(self, fields: _Fields) -> tuple[np.ndarray, np.ndarray]:
        return decode_request_pair(
            fields.t0,
            fields.t1,
            max_pixels=self.settings.max_pixels,
            min_side=self.settings.min_side,
            raster=self.raster,
            size_policy=self.settings.size_mismatch,
        )

    def _rgb(self, image: np.ndarray) -> np.ndarray:
        """The three bands an overlay shows: red, green, blue by ``data.band_roles``, else the first three."""
        if image.shape[-1] == 3:
            return image
        picked = (
            self.rgb_positions
            if self.rgb_positions is not None and image.shape[-1] > max(self.rgb_positions)
            else [0, 1, 2]
        )
        return np.ascontiguousarray(image[..., [min(i, image.shape[-1] - 1) for i in picked]])

    def _postprocess(self, t0: np.ndarray, t1: np.ndarray, result: dict, fields: _Fields) -> dict:
        mask = result["mask"]
        payload: dict[str, Any] = {
            "mask_png": _b64(_png(mask)),
            "summary": summarize_mask(mask, ignore_index=None, max_regions=self.settings.max_regions),
            "change_probability_png": None,
            "overlay_png": None,
        }
        if result.get("change_probability") is not None:
            scaled = np.rint(result["change_probability"] * 65535.0).astype(np.uint16)
            payload["change_probability_png"] = _b64(_png(scaled))
        if fields.overlay:
            payload["overlay_png"] = _b64(_png(overlay_panel(self._rgb(t0), self._rgb(t1), mask)))
        return payload
