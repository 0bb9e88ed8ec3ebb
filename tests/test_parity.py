"""The converted float models against the original TF Lite models, run by Google's LiteRT
interpreter, on real photos: same top-1, Coral's own assertions, ImageNet-sample accuracy.

Both sides get the same uint8 image. The interpreter answers in TF's 1001-class space
(``background`` = 0); ours in ImageNet's 1000: our class ``i`` is the interpreter's ``i + 1``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.imaging.preprocess import preprocess_image
from app.weights import SPECS, imagenet_labels, load_model
from app.weights.specs import VariantSpec
from app.weights.store import source_paths

Interpreter = pytest.importorskip("ai_edge_litert.interpreter").Interpreter

torch.set_num_threads(2)

TF_SPECS = [s for s in SPECS if s.origin == "tflite"]
TF_IDS = [s.name for s in TF_SPECS]
PHOTOS = ("cat.bmp", "cat_720p.jpg", "bird.bmp", "grace_hopper.bmp", "hot_dog.jpg")
# TF's 1001-class ids (Coral's tests speak this space).
TABBY, TIGER_CAT, EGYPTIAN_CAT, CHICKADEE = 282, 283, 286, 20
CATS = {TABBY, TIGER_CAT, EGYPTIAN_CAT}
# Coral's assertions for cat.bmp: (class in the top 3, with at least this score).
CORAL_CAT = {
    "v1-1.0-224": (EGYPTIAN_CAT, 0.78),
    "v1-0.5-160": (EGYPTIAN_CAT, 0.51),
    "v2-1.0-224": (EGYPTIAN_CAT, 0.7),
    "v1-0.25-128": (TIGER_CAT, 0.25),
    "v1-0.75-192": (TIGER_CAT, 0.35),
}


class Reference:
    """The original model: one interpreter, or several chained (V1 1.0/224)."""

    def __init__(self, paths: list[Path]) -> None:
        self.interpreters = []
        for path in paths:
            it = Interpreter(model_path=str(path), num_threads=2)
            it.allocate_tensors()
            self.interpreters.append(it)
        for a, b in zip(self.interpreters, self.interpreters[1:], strict=False):
            out, inp = a.get_output_details()[0], b.get_input_details()[0]
            # Chaining raw uint8 tensors is only right if both sides quantize alike.
            assert out["dtype"] == inp["dtype"] == np.uint8
            assert out["quantization"] == inp["quantization"]
            assert int(np.prod(out["shape"])) == int(np.prod(inp["shape"]))
        first = self.interpreters[0].get_input_details()[0]
        assert first["dtype"] == np.uint8
        self.scale, self.zero_point = first["quantization"]
        self.size = int(first["shape"][1])

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """uint8 HWC -> the 1001 raw (quantized) scores."""
        x = image[None]
        for it in self.interpreters:
            inp = it.get_input_details()[0]
            it.set_tensor(inp["index"], x.reshape(inp["shape"]))
            it.invoke()
            x = it.get_tensor(it.get_output_details()[0]["index"])
        return x.reshape(-1).copy()


@dataclass
class Runs:
    spec: VariantSpec
    reference: Reference
    model: torch.nn.Module

    def float_logits(self, images: np.ndarray) -> np.ndarray:
        """A uint8 NHWC batch -> our 1000 logits, fed ``(p - zero_point) * scale``."""
        x = (images.astype(np.float32) - self.reference.zero_point) * self.reference.scale
        with torch.no_grad():
            return self.model(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()

    def interpreter(self, images: np.ndarray) -> np.ndarray:
        return np.stack([self.reference(img) for img in images])


@pytest.fixture(scope="module")
def runs(weights_dir: Path):
    @cache
    def get(name: str) -> Runs:
        spec = next(s for s in TF_SPECS if s.name == name)
        paths = source_paths(weights_dir, spec)
        assert paths is not None, f"{spec.name}: upstream files were not kept"
        reference = Reference(paths)
        assert reference.size == spec.resolution
        return Runs(spec, reference, load_model(weights_dir, spec))

    return get


def _photo(images_dir: Path, name: str, size: int) -> np.ndarray:
    """pycoral's convention: the whole image resized (LANCZOS) to the input size."""
    img = Image.open(images_dir / name).convert("RGB")
    return np.asarray(img.resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)


@pytest.fixture(scope="module")
def photo_results(runs, images_dir: Path):
    """Per variant: (float logits [5, 1000], interpreter scores [5, 1001]) on the photos."""

    @cache
    def get(name: str) -> tuple[np.ndarray, np.ndarray]:
        r = runs(name)
        batch = np.stack([_photo(images_dir, p, r.spec.resolution) for p in PHOTOS])
        return r.float_logits(batch), r.interpreter(batch)

    return get


def _softmax(logits: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.from_numpy(logits), dim=-1).numpy()


# --- top-1 parity on the photos -----------------------------------------------------------
@pytest.mark.parametrize("spec", TF_SPECS, ids=TF_IDS)
def test_same_top1_as_the_interpreter(spec, photo_results, record_property) -> None:
    ours, theirs = photo_results(spec.name)
    assert ours.shape == (len(PHOTOS), 1000)
    assert theirs.shape == (len(PHOTOS), 1001)
    agree, report = 0, []
    for name, o, t in zip(PHOTOS, ours, theirs, strict=True):
        top = set(np.flatnonzero(t == t.max()).tolist())  # quantized scores tie
        assert 0 not in top, f"{name}: the interpreter says 'background'"
        mine = int(o.argmax()) + 1
        agree += mine in top
        report.append(f"{name}: ours {mine}, interpreter {sorted(top)}")
    record_property("top1_agreement", f"{agree}/{len(PHOTOS)}")
    detail = "; ".join(report)
    if spec.arch == "v3-small":  # hard-swish + SE: allowed one miss (it was 5/5)
        print(f"{spec.name}: top-1 agreement {agree}/{len(PHOTOS)} ({detail})")
        assert agree >= 4, detail
    else:
        assert agree == len(PHOTOS), detail


# --- Coral's assertions -------------------------------------------------------------------
def test_label_text_at_the_mapped_indices(mirror_dir: Path) -> None:
    labels = imagenet_labels()
    assert len(labels) == 1000
    assert labels[EGYPTIAN_CAT - 1] == "Egyptian cat"
    assert labels[CHICKADEE - 1] == "chickadee"
    assert labels[TIGER_CAT - 1] == "tiger cat"
    assert labels[TABBY - 1] == "tabby"
    tf_labels = (mirror_dir / "imagenet_labels.txt").read_text().splitlines()
    assert len(tf_labels) == 1001 and tf_labels[0] == "background"
    assert tf_labels[EGYPTIAN_CAT] == "Egyptian cat"
    assert tf_labels[CHICKADEE] == "chickadee"


@pytest.mark.parametrize("spec", TF_SPECS, ids=TF_IDS)
def test_coral_cat(spec, photo_results) -> None:
    ours, _ = photo_results(spec.name)
    probs = _softmax(ours[PHOTOS.index("cat.bmp")])
    top3 = [int(i) + 1 for i in np.argsort(-probs)[:3]]  # in TF's 1001 space
    assert top3[0] in CATS, f"top-1 {top3[0]} ({imagenet_labels()[top3[0] - 1]}) is no cat"
    if spec.name in CORAL_CAT:
        label, threshold = CORAL_CAT[spec.name]
        assert label in top3, top3
        assert probs[label - 1] >= threshold, (label, float(probs[label - 1]))


@pytest.mark.parametrize("spec", TF_SPECS, ids=TF_IDS)
def test_coral_bird(spec, photo_results) -> None:
    ours, _ = photo_results(spec.name)
    top1 = int(ours[PHOTOS.index("bird.bmp")].argmax())
    assert top1 + 1 == CHICKADEE
    assert imagenet_labels()[top1] == "chickadee"


# --- ImageNet sample: accuracy against the interpreter's ----------------------------------
@pytest.fixture(scope="module")
def imagenet_sample(images_dir: Path) -> tuple[list[Image.Image], np.ndarray]:
    root = images_dir / "imagenet-sample"
    with (root / "labels.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 100
    images = []
    for row in rows:
        with Image.open(root / row["file"]) as img:
            img.load()
            images.append(img.convert("RGB"))
    labels = np.array([int(row["class_index"]) for row in rows])
    assert ((labels >= 0) & (labels < 1000)).all()
    return images, labels


@pytest.mark.parametrize("spec", TF_SPECS, ids=TF_IDS)
def test_imagenet_sample_accuracy(spec, runs, imagenet_sample, record_property) -> None:
    pre = spec.preprocessing
    assert (pre.crop, pre.crop_fraction, pre.interpolation) == (
        "central_fraction",
        0.875,
        "bilinear",
    )
    images, labels = imagenet_sample
    batch = np.stack([preprocess_image(img, pre) for img in images])
    r = runs(spec.name)
    ours = r.float_logits(batch).argmax(axis=1)
    theirs = r.interpreter(batch)[:, 1:].argmax(axis=1)
    ours_correct, theirs_correct = int((ours == labels).sum()), int((theirs == labels).sum())
    agree = int((ours == theirs).sum())
    record_property("top1", f"float {ours_correct}%, interpreter {theirs_correct}%")
    print(
        f"{spec.name}: float {ours_correct}% interpreter {theirs_correct}% "
        f"(same top-1 on {agree}/100)"
    )
    # 100 images: a few flips either way are noise; a broken import drops to ~0%.
    assert abs(ours_correct - theirs_correct) <= 5, (ours_correct, theirs_correct)
    assert ours_correct >= 35
    # Same accuracy could hide different answers: the predictions themselves must agree
    # (measured: 93-99/100 for V1/V2; 79/100 for V3-small, whose int8 activations clip).
    assert agree >= (70 if spec.arch == "v3-small" else 88), agree
