"""The HTTP API's schema: request and response models (what the OpenAPI page documents)
and the one error body every failure is answered with."""

from __future__ import annotations

import asyncio

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from changeseg.serving.inputs import RequestError

__all__ = [
    "ERRORS",
    "MULTIPART_SCHEMA",
    "DetectJSON",
    "DetectResponse",
    "ErrorBody",
    "ErrorResponse",
    "ImageRef",
    "ModelRef",
    "Region",
    "Summary",
    "error_response",
    "short_reason",
]


class ImageRef(BaseModel):
    """One image: base64-encoded file bytes, or a storage URI the service may read."""

    model_config = ConfigDict(extra="forbid")
    data: str | None = Field(
        None,
        description="base64 of an encoded image file (PNG, JPEG, WebP, ...), or of a "
        "(Geo)TIFF / JPEG 2000 of any band count and 8/16-bit or float samples, read with the "
        "service's data.bands and data.scaling; its bands must match the model's input channels",
    )
    uri: str | None = Field(None, description="local path or s3:// URI under an allowed prefix")

    @model_validator(mode="after")
    def _exactly_one(self):
        if (self.data is None) == (self.uri is None):
            raise ValueError("give exactly one of 'data' and 'uri'")
        return self


class DetectJSON(BaseModel):
    """POST /v1/detect as JSON."""

    model_config = ConfigDict(extra="forbid")
    t0: ImageRef
    t1: ImageRef
    version: str | None = Field(None, description="registry version number or alias; default: the champion alias")
    probabilities: bool = Field(False, description="also return the change probability as a 16-bit PNG")
    overlay: bool = Field(False, description="also return an overlay panel (t0 | t1 | change on t1) as a PNG")
    threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="P(change) cut of a binary model; default: the version's stored operating point",
    )


class Region(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    class_: int = Field(alias="class", description="class index of the region")
    bbox: list[int] = Field(description="[x0, y0, x1, y1], pixel coordinates, ends exclusive")
    area: int = Field(description="pixels")


class Summary(BaseModel):
    height: int
    width: int
    changed_pixels: int
    changed_fraction: float
    regions_total: int
    regions: list[Region] = Field(description="largest first, at most serve.max_regions")


class ModelRef(BaseModel):
    name: str
    version: int
    requested: str


class DetectResponse(BaseModel):
    model: ModelRef
    mask_png: str = Field(description="base64 PNG, 8-bit, pixel value = class index (0 = no change)")
    summary: Summary
    timings_ms: dict[str, float] = Field(description="decode, model (queue + inference), inference, postprocess, total")
    batch_size: int = Field(description="pairs in the forward pass that served this request")
    change_probability_png: str | None = Field(None, description="base64 PNG, 16-bit, P(change) * 65535")
    threshold: float | None = Field(None, description="the P(change) cut used (binary models); null: argmax")
    overlay_png: str | None = None


class ErrorBody(BaseModel):
    status: int
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


ERRORS = {code: {"model": ErrorResponse} for code in (403, 404, 413, 415, 422, 503, 504)}
MULTIPART_SCHEMA = {
    "type": "object",
    "required": ["t0", "t1"],
    "properties": {
        "t0": {
            "type": "string",
            "format": "binary",
            "description": "image before (PNG, JPEG, ..., or a multi-band GeoTIFF)",
        },
        "t1": {"type": "string", "format": "binary", "description": "image after, the same kind and band count as t0"},
        "version": {"type": "string", "description": "registry version number or alias"},
        "probabilities": {"type": "boolean"},
        "overlay": {"type": "boolean"},
        "threshold": {"type": "number", "minimum": 0, "maximum": 1},
    },
}


def error_response(err: RequestError) -> JSONResponse:
    return JSONResponse(err.to_json(), status_code=err.status)


def short_reason(err: BaseException) -> str:
    """A one-line reason for /readyz: our own message, or the error's type only (no remote
    traceback, paths or addresses)."""
    if isinstance(err, RequestError):
        return err.message.splitlines()[0][:200]
    if isinstance(err, asyncio.TimeoutError):
        return "the default model did not load in time"
    return f"the default model could not be loaded ({type(err).__name__})"
