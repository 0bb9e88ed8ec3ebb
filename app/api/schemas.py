"""Response models: they are the OpenAPI contract, with examples for the docs page."""

from __future__ import annotations

from pydantic import BaseModel, Field


class PredictionOut(BaseModel):
    index: int = Field(description="Class index in the 1000-class ImageNet space.", examples=[285])
    label: str = Field(examples=["Egyptian cat"])
    score: float = Field(ge=0, le=1, examples=[0.84])


class VariantOut(BaseModel):
    name: str = Field(examples=["v3-small-1.0-224"])
    model: str = Field(examples=["v3-small"])
    width: float = Field(description="Width multiplier (alpha).", examples=[1.0])
    resolution: int = Field(description="Input side in pixels (rho).", examples=[224])
    origin: str = Field(
        description="Where the weights come from: tflite or torchvision.", examples=["tflite"]
    )
    backend: str = Field(examples=["litert"])
    device: str = Field(examples=["cpu"])
    precision: str = Field(examples=["int8"])


class FallbackOut(BaseModel):
    """Set when ``fallback=nearest`` served another variant than the one asked for."""

    asked: str = Field(description="What the request asked for.", examples=["model v1, width 0.6"])
    served: str = Field(description="The variant that answered.", examples=["v1-0.5-160"])
    reason: str = Field(
        description="The 404 message the request would have had without the fallback.",
        examples=["width 0.6 is not loaded for v1; loaded widths: 0.25, 0.5, 0.75, 1; ..."],
    )


class ServedVariantOut(VariantOut):
    fallback: FallbackOut | None = Field(
        None, description="Only with fallback=nearest, when the asked variant is not loaded."
    )


class Timings(BaseModel):
    decode_ms: float = Field(description="Decode + preprocess.")
    queue_ms: float = Field(description="Waiting for the batch to start.")
    inference_ms: float = Field(description="The batch's forward pass.")
    total_ms: float = Field(description="Server time for this request.")


class PredictResponse(BaseModel):
    request_id: str = Field(examples=["9f1c2e4b7a0d4c3e"])
    variant: ServedVariantOut
    predictions: list[PredictionOut]
    batch_size: int = Field(description="Size of the batch this image ran in.", examples=[4])
    timings: Timings


class BatchItemError(BaseModel):
    code: str = Field(examples=["corrupt_image"])
    message: str


class BatchItem(BaseModel):
    index: int = Field(description="Position of the file in the request.")
    filename: str | None = None
    ok: bool
    predictions: list[PredictionOut] | None = None
    batch_size: int | None = None
    timings: Timings | None = None
    error: BatchItemError | None = None


class BatchPredictResponse(BaseModel):
    request_id: str
    variant: ServedVariantOut
    results: list[BatchItem]


class AccuracyOut(BaseModel):
    top1: float
    top5: float | None
    source: str


class PreprocessingOut(BaseModel):
    size: int
    crop: str
    crop_fraction: float
    resize_size: int | None
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class SourceOut(BaseModel):
    filename: str
    url: str
    sha256: str


class ModelOut(VariantOut):
    params: int = Field(examples=[2542856])
    num_classes: int = Field(examples=[1000])
    quantized_source: bool
    license: str
    accuracy: AccuracyOut | None
    preprocessing: PreprocessingOut
    sources: list[SourceOut]
    default_for: list[str] = Field(description="Model names that resolve to this variant.")
    release_names: list[str] = Field(
        default_factory=list,
        description="Other names a request may use for it: the spec's aliases and upstream "
        "release names (TF Lite, TF Hub).",
        examples=[["mobilenet_v1_0.5_160_quant", "mobilenet_v1_0.5_160"]],
    )


class ModelsResponse(BaseModel):
    default: str = Field(description="Variant used when a request names no model.")
    aliases: dict[str, str] = Field(
        description="Model name -> variant it resolves to.",
        examples=[{"v3": "v3-small-1.0-224", "v1": "v1-1.0-224"}],
    )
    spellings: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Model name -> every spelling a request may use for it (any case; "
        "'-', '_' and spaces are ignored).",
        examples=[{"v2": ["v2", "mobilenet_v2", "MobileNetV2", "mobilenetv2"]}],
    )
    models: list[ModelOut]


class HealthResponse(BaseModel):
    status: str = Field(examples=["ok"])


class ReadyResponse(BaseModel):
    status: str = Field(examples=["ready"])
    variants: list[str] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list)
    degraded: list[str] = Field(
        default_factory=list, description="Variants not offered (e.g. failed golden check)."
    )
