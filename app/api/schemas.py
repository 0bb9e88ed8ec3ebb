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
    macs: int | None = Field(
        None,
        description="Multiply-accumulates per image, as published by the authors.",
        examples=[56000000],
    )
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


# --- explain and compare ------------------------------------------------------------------
class RegionOut(BaseModel):
    """Where the saliency grid lies on the image, as fractions of its width and height (the
    part the model sees after its crop; past 0-1 where the recipe pads)."""

    left: float = Field(examples=[0.0625])
    top: float = Field(examples=[0.0625])
    right: float = Field(examples=[0.9375])
    bottom: float = Field(examples=[0.9375])


class SaliencyOut(BaseModel):
    class_index: int = Field(description="The class explained.", examples=[285])
    label: str = Field(examples=["Egyptian cat"])
    score: float = Field(description="Its probability on the whole image.", examples=[0.53])
    grid: int = Field(description="Cells per side of the map.", examples=[14])
    patch: int = Field(description="Side of the occluding patch, in cells.", examples=[4])
    stride: int = Field(description="Step of the patch, in cells.", examples=[2])
    forwards: int = Field(description="Forward passes this explain cost.", examples=[50])
    values: list[list[float]] = Field(
        description="grid x grid, rows from the top: how much hiding each cell lowers the "
        "score, divided by the largest drop (1 = most important; 0 = no drop)."
    )
    drops: list[list[float]] = Field(
        description="grid x grid: the mean drop of the class probability when the cell is "
        "hidden (negative: hiding it raised the score)."
    )
    region: RegionOut
    image_width: int = Field(description="Width of the decoded image (JPEGs: maybe reduced).")
    image_height: int


class ExplainTimings(BaseModel):
    decode_ms: float = Field(description="Decode, preprocess and build the occluded copies.")
    inference_ms: float = Field(description="This request's share of the batches' forwards.")
    total_ms: float = Field(description="Server time for this request.")


class ExplainResponse(BaseModel):
    request_id: str
    variant: VariantOut
    predictions: list[PredictionOut] = Field(description="Top-k on the whole image.")
    saliency: SaliencyOut
    timings: ExplainTimings


class CompareItem(BaseModel):
    variant: VariantOut
    ok: bool
    params: int = Field(examples=[2542856])
    macs: int | None = Field(
        description="Multiply-accumulates per image, as published by the authors.",
        examples=[56000000],
    )
    accuracy: AccuracyOut | None = Field(description="ImageNet accuracy upstream reports.")
    predictions: list[PredictionOut] | None = None
    batch_size: int | None = None
    timings: Timings | None = Field(
        None, description="total_ms: from the request's start to this variant's answer."
    )
    error: BatchItemError | None = None


class CompareResponse(BaseModel):
    request_id: str
    decodes: int = Field(description="Decodes done: one per distinct preprocessing.")
    total_ms: float
    results: list[CompareItem] = Field(description="One per loaded variant, in /models order.")
