"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

ImageFormat = Literal["png", "jpeg", "webp", "raw"]
MEDIA_TYPES: dict[str, str] = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "raw": "application/octet-stream",
}
RAW_DTYPE = "uint8"
MAX_SEED = (1 << 63) - 1


class GenerateRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {"num_images": 4, "class_labels": 3, "seed": 7, "format": "png"},
                {"model": "fmnist-d2o", "num_images": 2, "class_labels": [0, 9], "seed": None, "format": "webp"},
            ]
        },
    )

    model: str | None = Field(
        None, min_length=1, max_length=128, description="Model name (see GET /v1/models); default model when null."
    )
    num_images: int = Field(1, ge=1, strict=True, description="How many images; at most the server's limit (413).")
    class_labels: StrictInt | list[StrictInt] | None = Field(
        None,
        description="One class for all images, one per image, or null: random classes drawn from each image's "
        "seed (conditional models). Must be null for unconditional models.",
    )
    seed: int | None = Field(
        None,
        ge=0,
        le=MAX_SEED,
        strict=True,
        description="Image i uses seed + i. Null: the server draws a seed and returns it.",
    )
    format: ImageFormat = Field(
        "png",
        description="Image encoding; raw: the uint8 pixels themselves, height x width x channels in C order, not "
        "encoded (for machines: no decoder needed, no encoding cost), with shape and dtype beside the data.",
    )
    quality: int = Field(90, ge=1, le=100, strict=True, description="JPEG/WebP quality (ignored for PNG).")


class GeneratedImage(BaseModel):
    seed: int = Field(description="Seed of this image's noise; send it back to get the same image.")
    class_label: int | None = Field(description="Class index used (null for unconditional models).")
    class_name: str | None = Field(description="Name of that class, from the model's config.")
    media_type: str = Field(description="image/png, image/jpeg, image/webp, or application/octet-stream (raw).")
    data: str = Field(description="Base64 of the encoded image (raw: of its pixels).")
    shape: list[int] | None = Field(
        None, description="Raw images only: [height, width, channels] of the pixels in data (C order)."
    )
    dtype: Literal["uint8"] | None = Field(None, description="Raw images only: the pixels' type, uint8.")


class Timing(BaseModel):
    queue_ms: float = Field(description="From arrival until the request's first batch started.")
    inference_ms: float = Field(description="Compute time of the batches that held this request's images.")
    encode_ms: float = Field(description="Image encoding time.")
    total_ms: float = Field(description="Server time from arrival to response.")
    batch_size: int = Field(description="Size of the largest batch this request's images ran in.")


class GenerateResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model: str
    model_version: str = Field(
        description="Version of the model that made the images (as the X-Model-Version header and GET /v1/models)."
    )
    images: list[GeneratedImage]
    timing: Timing


class ModelInfo(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    id: str
    object: Literal["model"] = "model"
    default: bool
    status: Literal["loading", "ready", "failed"]
    error: str | None = None
    backend: str
    img_resolution: int
    img_channels: int
    label_dim: int
    class_names: list[str]
    max_batch_size: int
    preferred_batch_sizes: list[int] | None = None
    version: str | None = Field(
        None,
        description="The version serving: the first 12 hex digits of the weights' SHA-256, after config.json's "
        "version when it names one (1.2.0+1cfd72839139). Generate responses name it too (X-Model-Version).",
    )
    weights_sha256: str | None = Field(None, description="SHA-256 of the weights file serving.")
    license: str | None = Field(None, description="SPDX identifier of the weights' licence.")
    license_url: str | None = Field(None, description="Where the licence's terms are.")
    origin: str | None = Field(None, description="Where the weights come from (import, training, teacher).")
    reload_error: str | None = Field(None, description="Why the last reload was refused; the version above serves.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    default: str | None
    data: list[ModelInfo]


class HealthStatus(BaseModel):
    status: str
    models: dict[str, str] = Field(default_factory=dict, description="Model name -> loading | ready | failed.")
