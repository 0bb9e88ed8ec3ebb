"""Every served variant, as data: where its weights come from and how to feed it.

A variant is (architecture, width, resolution) from one origin. Like torchvision's
``Weights`` enums and timm's pretrained configs, each spec carries everything the rest of
the service needs: upstream files with sha256, license, labels, preprocessing, class
count, parameter count and the accuracy upstream reports. Adding a variant means adding
an entry here (see docs/weights.md); no code changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from app.imaging.preprocess import Preprocessing, tf_preprocessing, torchvision_preprocessing

if TYPE_CHECKING:  # app.models imports torch; specs must not (LiteRT serving needs none)
    from app.models.factory import Arch

Origin = Literal["tflite", "torchvision"]

CORAL = "https://github.com/google-coral/test_data/raw/104342d2d3480b3e66203073dac24f4e2dbb4c41"
ATU = (
    "https://github.com/weilly0912/ATU_Model_Zoo/raw/16742989779cd175d708afd02c3c748a86494027"
    "/Classification"
)
TORCHVISION = "https://download.pytorch.org/models"
CORAL_LICENSE = "Apache-2.0 (google-coral/test_data; TF Lite release by Google)"
ATU_LICENSE = "Apache-2.0 (TF Lite release by Google), redistributed under MIT by ATU_Model_Zoo"
TV_LICENSE = "BSD-3-Clause (torchvision)"


@dataclass(frozen=True, kw_only=True)
class SourceFile:
    """One upstream file. ``sha256`` may be a prefix where upstream publishes only that
    (torchvision puts the first 8 hex digits in its file names)."""

    filename: str
    url: str
    sha256: str
    role: Literal["model", "features", "head"] = "model"


@dataclass(frozen=True, kw_only=True)
class Accuracy:
    """ImageNet-1k validation accuracy as upstream reports it (percent)."""

    top1: float
    top5: float | None
    source: str


@dataclass(frozen=True, kw_only=True)
class VariantSpec:
    """One servable variant."""

    name: str
    arch: Arch
    width: float
    resolution: int
    origin: Origin
    sources: tuple[SourceFile, ...]
    preprocessing: Preprocessing
    params: int
    license: str
    accuracy: Accuracy | None = None
    macs: int | None = None  # multiply-accumulates per image, as upstream publishes them
    num_classes: int = 1000
    upstream_classes: int = 1000
    labels: str = "imagenet-1k"
    quantized: bool = False
    notes: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)

    @property
    def filename(self) -> str:
        """Name of the converted weights under the weights directory."""
        return f"{self.name}.safetensors"

    @property
    def model(self) -> str:
        """The public model name a request uses (``v1``, ``v2``, ``v3-small``, ...)."""
        return self.arch


def _tf(
    arch: Arch,
    width: float,
    res: int,
    *,
    sources: tuple[SourceFile, ...],
    params: int,
    license: str,
    accuracy: Accuracy,
    macs: int,
    input_scale: float = 1 / 128,
    notes: str = "",
) -> VariantSpec:
    return VariantSpec(
        name=f"{arch}-{width}-{res}",
        arch=arch,
        width=width,
        resolution=res,
        origin="tflite",
        sources=sources,
        params=params,
        license=license,
        accuracy=accuracy,
        macs=macs,
        preprocessing=tf_preprocessing(res, input_scale=input_scale, input_zero_point=128),
        upstream_classes=1001,
        quantized=True,
        notes=notes,
    )


def _tv(
    arch: Arch, filename: str, *, params: int, macs: int, top1: float, top5: float
) -> VariantSpec:
    """A torchvision IMAGENET1K_V1 checkpoint: its name carries the sha256 prefix."""
    prefix = filename.rsplit("-", 1)[1].removesuffix(".pth")
    return VariantSpec(
        name=f"{arch}-1.0-224-torchvision",
        arch=arch,
        width=1.0,
        resolution=224,
        origin="torchvision",
        params=params,
        macs=macs,
        license=TV_LICENSE,
        preprocessing=torchvision_preprocessing(224, resize_size=256),
        sources=(SourceFile(filename=filename, url=f"{TORCHVISION}/{filename}", sha256=prefix),),
        accuracy=Accuracy(top1=top1, top5=top5, source="torchvision IMAGENET1K_V1"),
    )


def _coral(
    filename: str,
    sha256: str,
    *,
    path: str | None = None,
    role: Literal["model", "features", "head"] = "model",
) -> SourceFile:
    return SourceFile(
        filename=filename, url=f"{CORAL}/{path or filename}", sha256=sha256, role=role
    )


_SLIM_V1 = "TF-slim mobilenet_v1.md (8-bit quantized)"
_V1_NOTE = (
    "Quantization-aware uint8 TF Lite release, dequantized to float32; background "
    "class dropped (1001 -> 1000)."
)

# Multiply-accumulates per image at the variant's resolution, as the authors publish them
# (the compare route shows them next to latency and accuracy: the cost side of the curve).
# V1: TF-slim research/slim/nets/mobilenet_v1.md, "Million MACs" column (paper Table 6/7
# agree: 569 M for 1.0-224). V2: TF-slim research/slim/nets/mobilenet/README.md, 300 M for
# 1.0-224 (paper Table 4: 300 M). V3: the paper (Howard et al. 2019, arXiv 1905.02244)
# Table 3: Large 1.0 219 M, Small 1.0 56 M MAdds (TF-slim's README lists 217 M and 66 M).
_V1_MACS = {
    (1.0, 224): 569_000_000,
    (0.75, 224): 317_000_000,
    (0.75, 192): 233_000_000,
    (0.5, 160): 77_000_000,
    (0.25, 128): 14_000_000,
}
_V2_MACS = 300_000_000
_V3_SMALL_MACS = 56_000_000
_V3_LARGE_MACS = 219_000_000

SPECS: tuple[VariantSpec, ...] = (
    _tf(
        "v1",
        0.25,
        128,
        params=470_072,
        macs=_V1_MACS[(0.25, 128)],
        license=CORAL_LICENSE,
        notes=_V1_NOTE,
        sources=(
            _coral(
                "mobilenet_v1_0.25_128_quant.tflite",
                "cb273c23ee76374b05b9583177e28aa19744858a7679c56a250e83d0333da785",
            ),
        ),
        accuracy=Accuracy(top1=39.9, top5=65.8, source=_SLIM_V1),
    ),
    _tf(
        "v1",
        0.5,
        160,
        params=1_331_592,
        macs=_V1_MACS[(0.5, 160)],
        license=CORAL_LICENSE,
        notes=_V1_NOTE,
        sources=(
            _coral(
                "mobilenet_v1_0.5_160_quant.tflite",
                "3cc6d2ca460abd2e0f699a6d0d2550c6b61c6e3b0e27a3616e384ea74cb86f43",
            ),
        ),
        accuracy=Accuracy(top1=57.7, top5=81.3, source=_SLIM_V1),
    ),
    _tf(
        "v1",
        0.75,
        192,
        params=2_585_560,
        macs=_V1_MACS[(0.75, 192)],
        license=CORAL_LICENSE,
        notes=_V1_NOTE,
        sources=(
            _coral(
                "mobilenet_v1_0.75_192_quant.tflite",
                "41daeb22fdcf947e0e5ec32373aa9df7c31f3ef45dbd0ef7b5940fbce3c20f6a",
            ),
        ),
        accuracy=Accuracy(top1=66.2, top5=87.1, source=_SLIM_V1),
    ),
    _tf(
        "v1",
        0.75,
        224,
        params=2_585_560,
        macs=_V1_MACS[(0.75, 224)],
        license=ATU_LICENSE,
        notes=_V1_NOTE,
        sources=(
            SourceFile(
                filename="mobilenet_v1_0.75_224_quant.tflite",
                url=f"{ATU}/mobilenet_v1/mobilenet_v1_0.75_224_quant.tflite",
                sha256="c840ef6d6284a744a4b7c29c9fca0e66b71a20ea55ce1c8a705d2cfe11190eb6",
            ),
        ),
        accuracy=Accuracy(top1=67.9, top5=88.1, source=_SLIM_V1),
    ),
    _tf(
        "v1",
        1.0,
        224,
        params=4_231_976,
        macs=_V1_MACS[(1.0, 224)],
        license=CORAL_LICENSE,
        notes=_V1_NOTE + " Upstream ships it as two files: feature extractor + logits head.",
        sources=(
            _coral(
                "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite",
                "f409ef4f73fcbb9667841965623c5c8524aac33d41b9bf5f3667161fb4a76319",
                role="features",
            ),
            _coral(
                "mobilenet_v1_1.0_224_quant_head_layers.tflite",
                "65a88984b258c6f3c99d7573acac8cf85bd747293d83d51fafc1c2fb6d632286",
                path="tools/mobilenet_quant_v1_224_head_layers.tflite",
                role="head",
            ),
        ),
        accuracy=Accuracy(top1=69.7, top5=89.5, source=_SLIM_V1),
    ),
    _tf(
        "v2",
        1.0,
        224,
        params=3_504_872,
        macs=_V2_MACS,
        license=CORAL_LICENSE,
        notes="Quantization-aware uint8 TF Lite release; background class dropped.",
        sources=(
            _coral(
                "mobilenet_v2_1.0_224_quant.tflite",
                "7aad0c74c5e3c06e5eb3c827e13304fdd68a83da6087d92ee169c24ff9fd4776",
            ),
        ),
        accuracy=Accuracy(top1=70.8, top5=89.9, source="TF Lite hosted models (quantized)"),
    ),
    _tf(
        "v3-small",
        1.0,
        224,
        params=2_542_856,
        macs=_V3_SMALL_MACS,
        license=ATU_LICENSE,
        input_scale=1 / 127,
        notes="Official MobileNetV3-Small 1.0 uint8 release; background class dropped.",
        sources=(
            SourceFile(
                filename="v3-small_224_1.0_uint8.tflite",
                url=f"{ATU}/mobilenet_v3/v3-small_224_1.0_uint8.tflite",
                sha256="da341cf06fa50127a72dcbeb140ee5ee98013630aa044260a4c3d45c43fc89ce",
            ),
        ),
        accuracy=Accuracy(top1=64.9, top5=None, source="TF-slim mobilenet/README.md (8-bit)"),
    ),
    _tv(
        "v2",
        "mobilenet_v2-b0353104.pth",
        params=3_504_872,
        macs=_V2_MACS,
        top1=71.878,
        top5=90.286,
    ),
    _tv(
        "v3-small",
        "mobilenet_v3_small-047dcff4.pth",
        params=2_542_856,
        macs=_V3_SMALL_MACS,
        top1=67.668,
        top5=87.402,
    ),
    _tv(
        "v3-large",
        "mobilenet_v3_large-8738ca79.pth",
        params=5_483_032,
        macs=_V3_LARGE_MACS,
        top1=74.042,
        top5=91.340,
    ),
)

SPECS_BY_NAME: dict[str, VariantSpec] = {s.name: s for s in SPECS}

LABELS_FILE = _coral(
    "imagenet_labels.txt", "b8aaeb5630c62626a7d124a05c0e14230a7ffdd2136a31d0190a4fb71c1d82f1"
)


def get_spec(name: str) -> VariantSpec:
    """Look a variant up by name; the error lists every known name."""
    try:
        return SPECS_BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown variant {name!r}; known: {', '.join(SPECS_BY_NAME)}") from None
