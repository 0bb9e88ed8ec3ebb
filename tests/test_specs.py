"""Every entry of ``SPECS`` is complete and consistent (cf. torchvision's schema/meta tests).

Each spec is checked against the architecture it builds, the upstream file it names (its
input quantization, its input size) and the mirror's README, which records the upstream
URL and sha256 of every mirrored file.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest

from app.models import build_model, count_parameters
from app.weights.specs import LABELS_FILE, SPECS, SPECS_BY_NAME, get_spec
from app.weights.tflite_import import TfliteGraph

SPEC_IDS = [s.name for s in SPECS]
TF_SPECS = [s for s in SPECS if s.origin == "tflite"]
TV_SPECS = [s for s in SPECS if s.origin == "torchvision"]
HEX64 = re.compile(r"[0-9a-f]{64}")
HEX8 = re.compile(r"[0-9a-f]{8}")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The float input each TF Lite release expects, as a function of the uint8 pixel p.
TF_INPUT = {"v1": (128, 128.0), "v2": (128, 128.0), "v3-small": (128, 127.0)}


def test_the_registry_covers_the_family() -> None:
    names = [s.name for s in SPECS]
    assert len(names) == len(set(names)), "duplicate variant names"
    aliases = [a for s in SPECS for a in s.aliases]
    assert not set(aliases) & set(names), "an alias shadows a variant name"
    assert len(aliases) == len(set(aliases))
    assert set(SPECS_BY_NAME) == set(names)
    assert {s.arch for s in SPECS} == {"v1", "v2", "v3-small", "v3-large"}
    assert len(TF_SPECS) == 7 and len(TV_SPECS) == 3


def test_get_spec_names_every_variant_when_unknown() -> None:
    assert get_spec("v2-1.0-224") is SPECS_BY_NAME["v2-1.0-224"]
    with pytest.raises(KeyError) as exc:
        get_spec("v9-1.0-224")
    assert "v9-1.0-224" in str(exc.value)
    for name in SPEC_IDS:
        assert name in str(exc.value)


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_name_and_identity(spec) -> None:
    expected = f"{spec.arch}-{spec.width}-{spec.resolution}"
    if spec.origin == "torchvision":
        expected += "-torchvision"
    assert spec.name == expected
    assert spec.filename == f"{spec.name}.safetensors"
    assert spec.model == spec.arch
    assert 0 < spec.width <= 1.4
    assert spec.resolution in (128, 160, 192, 224)
    assert spec.num_classes == 1000
    assert spec.labels == "imagenet-1k"
    assert spec.license.strip()
    if spec.origin == "tflite":
        assert spec.upstream_classes == 1001  # TF's extra "background" class
        assert spec.quantized
    else:
        assert spec.origin == "torchvision"
        assert spec.upstream_classes == 1000
        assert not spec.quantized


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_sources(spec) -> None:
    assert spec.sources
    filenames = [s.filename for s in spec.sources]
    assert len(filenames) == len(set(filenames))
    roles = [s.role for s in spec.sources]
    assert roles in (["model"], ["features", "head"])
    for source in spec.sources:
        url = urlparse(source.url)
        assert url.scheme == "https" and url.netloc, source.url
        assert "/" not in source.filename and source.filename
        if spec.origin == "tflite":
            assert source.filename.endswith(".tflite")
            assert HEX64.fullmatch(source.sha256), source.sha256
        else:
            assert source.filename.endswith(".pth")
            assert HEX8.fullmatch(source.sha256), source.sha256
            assert source.filename.endswith(f"-{source.sha256}.pth")
            assert url.netloc == "download.pytorch.org"
            assert url.path.rsplit("/", 1)[-1] == source.filename


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_preprocessing(spec) -> None:
    pre = spec.preprocessing
    assert pre.size == spec.resolution
    assert pre.interpolation == "bilinear"
    p = np.arange(256, dtype=np.float64)
    got = [(p / 255 - pre.mean[c]) / pre.std[c] for c in range(3)]
    if spec.origin == "tflite":
        assert pre.crop == "central_fraction"
        assert pre.crop_fraction == pytest.approx(0.875)
        zero, scale = TF_INPUT[spec.arch]
        for channel in got:
            np.testing.assert_allclose(channel, (p - zero) / scale, atol=1e-9)
    else:
        assert pre.crop == "resize_center_crop"
        assert (pre.size, pre.resize_size) == (224, 256)
        assert pre.mean == pytest.approx(IMAGENET_MEAN)
        assert pre.std == pytest.approx(IMAGENET_STD)


@pytest.mark.parametrize("spec", TF_SPECS, ids=[s.name for s in TF_SPECS])
def test_tf_preprocessing_equals_the_files_input_quantization(spec, mirror_dir: Path) -> None:
    graph = TfliteGraph((mirror_dir / spec.sources[0].filename).read_bytes())
    assert graph.input_shape() == (1, spec.resolution, spec.resolution, 3)
    quant = graph.input_quant()
    assert quant is not None
    zero, scale = float(quant.zero_point[0]), float(quant.scale[0])
    pre = spec.preprocessing
    for c in range(3):
        assert pre.mean[c] == pytest.approx(zero / 255, abs=1e-7)
        assert pre.std[c] == pytest.approx(1 / (scale * 255), abs=1e-7)


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_params_equal_the_built_model(spec) -> None:
    model = build_model(
        spec.arch, width=spec.width, num_classes=spec.num_classes, origin=spec.origin
    )
    assert count_parameters(model) == spec.params


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_accuracy(spec) -> None:
    acc = spec.accuracy
    assert acc is not None
    assert 0 < acc.top1 < 100
    if acc.top5 is not None:
        assert acc.top1 < acc.top5 < 100
    assert acc.source.strip()


# --- the mirror's README: the record of upstream URLs and sha256s ----------------------
def _readme_table(readme: Path) -> dict[str, tuple[str, str]]:
    """``{file: (upstream URL, sha256)}`` from the README's pretrained/tflite table."""
    rows: dict[str, tuple[str, str]] = {}
    repo = commit = None
    for line in readme.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not HEX64.fullmatch(cells[2]):
            continue
        filename, upstream, sha = cells
        if m := re.match(r"github\.com/(\S+/\S+) @([0-9a-f]{40}) (/\S+)", upstream):
            repo, commit, path = m.groups()
        else:
            assert upstream.startswith("same repo and commit, "), upstream
            assert repo and commit
            rest = upstream.removeprefix("same repo and commit, ")
            if rest.startswith("same name"):
                path = f"/{filename}"
            else:
                m = re.match(r"(/\S+)", rest)
                assert m, upstream
                path = m.group(1)
        rows[filename] = (f"https://github.com/{repo}/raw/{commit}{path}", sha)
    return rows


@pytest.fixture(scope="module")
def readme_table(mirror_dir: Path) -> dict[str, tuple[str, str]]:
    readme = mirror_dir.parents[1] / "README.md"
    if not readme.is_file():
        pytest.skip(f"{readme} is missing")
    table = _readme_table(readme)
    assert len(table) == 9, table  # 8 model files + the labels file
    return table


def test_readme_table_matches_the_mirror(readme_table, mirror_dir: Path) -> None:
    for filename, (_, sha) in readme_table.items():
        assert hashlib.sha256((mirror_dir / filename).read_bytes()).hexdigest() == sha, filename


@pytest.mark.parametrize("spec", TF_SPECS, ids=[s.name for s in TF_SPECS])
def test_tf_sources_equal_the_readme(spec, readme_table) -> None:
    for source in spec.sources:
        assert source.filename in readme_table, f"{source.filename} is not in the mirror"
        url, sha = readme_table[source.filename]
        assert source.url == url
        assert source.sha256 == sha


def test_labels_file_equals_the_readme(readme_table) -> None:
    url, sha = readme_table[LABELS_FILE.filename]
    assert (LABELS_FILE.url, LABELS_FILE.sha256) == (url, sha)


def test_every_mirrored_model_file_has_a_spec(readme_table) -> None:
    named = {s.filename for spec in TF_SPECS for s in spec.sources} | {LABELS_FILE.filename}
    assert set(readme_table) == named
