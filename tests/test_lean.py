"""The lean process: TF-origin variants on LiteRT never need or import torch.

torch and torchvision are an extra (``mobilenet-serve[torch]``). A subprocess in which
``import torch`` / ``torchvision`` / ``safetensors`` fail (a meta-path blocker: what a
lean install looks like) fetches the seven mirror variants, serves them, classifies
cat.bmp, and reports its RSS; a second one, with torch installed but never asked for,
shows that serving does not import it either. Asking for a torch path without torch
fails at start-up, naming the extra.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from app.errors import WeightsError
from app.inference.select import gpu_possible
from app.serving.service import ClassifierService
from app.settings import Settings
from app.weights import SPECS_BY_NAME, fetch_variants, imagenet_labels, store
from app.weights.specs import SPECS

REPO = Path(__file__).resolve().parents[1]
EGYPTIAN_CAT = 285
# The budget with all seven mirror variants loaded, for a one-thread replica (scaling out
# by replicas). Each further thread adds one XNNPACK interpreter per variant (the LiteRT
# backend's design: ~13 MB each for a v2-sized graph): ~255 MB at two threads.
RSS_LIMIT_MB = 250
HEAVY = ("torch", "torchvision", "safetensors")

PROBE = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path

    block, weights, mirror, image = sys.argv[1] == "block", *map(Path, sys.argv[2:5])
    if block:  # a lean install: these packages are not there
        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {HEAVY!r}:
                    raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)", name=name)
                return None
        sys.meta_path.insert(0, Blocker())
        from app.weights import default_variants, fetch_variants
        results = fetch_variants(default_variants(mirror), weights_dir=weights, mirror=mirror,
                                 progress=False)
        assert all(r.status == "fetched" for r in results), results

    from fastapi.testclient import TestClient
    from app.api import create_app
    from app.settings import Settings

    settings = Settings(weights_dir=weights, device=sys.argv[6], backend="auto", variants=None,
                        threads=int(sys.argv[5]))
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 300
        while client.get("/readyz").status_code != 200:
            failed = client.app.state.loading.done()
            assert not failed and time.monotonic() < deadline, client.get("/readyz").json()
            time.sleep(0.1)
        models = client.get("/models").json()["models"]
        r = client.post("/predict?model=v3", files={{"file": ("cat.bmp", image.read_bytes())}})
        assert r.status_code == 200, r.text
        for m in models:  # every variant answers once
            ok = client.post(f"/predict?variant={{m['name']}}",
                             files={{"file": ("cat.bmp", image.read_bytes())}})
            assert ok.status_code == 200, ok.text
        rss_kb = int(next(l.split()[1] for l in open("/proc/self/status")
                          if l.startswith("VmRSS:")))
        print(json.dumps({{
            "heavy": sorted(m for m in {HEAVY!r} if m in sys.modules),
            "backends": sorted({{m["backend"] for m in models}}),
            "variants": sorted(m["name"] for m in models),
            "top": r.json()["predictions"][0],
            "rss_mb": rss_kb / 1024,
        }}))
    """
).format(HEAVY=set(HEAVY))


def _probe(
    mode: str, weights: Path, mirror: Path, image: Path, *, threads: int = 1, device: str = "cpu"
) -> dict:
    args = [mode, str(weights), str(mirror), str(image), str(threads), device]
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_labels_ship_as_package_data_equal_to_torchvisions() -> None:
    from torchvision.models import MobileNet_V2_Weights

    assert imagenet_labels() == tuple(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])
    assert imagenet_labels()[EGYPTIAN_CAT] == "Egyptian cat"


@pytest.mark.slow
def test_a_lean_install_fetches_and_serves_the_mirror_without_torch(
    tmp_path: Path, mirror_dir: Path, images_dir: Path
) -> None:
    weights = tmp_path / "weights"
    out = _probe("block", weights, mirror_dir, images_dir / "cat.bmp")
    assert out["heavy"] == []
    assert out["backends"] == ["litert"]
    assert len(out["variants"]) == 7
    assert out["top"]["index"] == EGYPTIAN_CAT and out["top"]["label"] == "Egyptian cat"
    assert out["rss_mb"] <= RSS_LIMIT_MB, out
    # What it wrote: the verified upstream files and a manifest, no converted files.
    assert not list(weights.glob("*.safetensors"))
    entries = store.read_manifest(weights)["variants"]
    assert sorted(entries) == out["variants"]
    for name in entries:
        spec = SPECS_BY_NAME[name]
        assert store.is_current(weights, spec, converted=False)
        assert not store.is_current(weights, spec)  # the torch backends would need more
        with pytest.raises(WeightsError, match=r"mobilenet-serve\[torch\]"):
            store.load_model(weights, spec)
    print(f"lean process RSS with 7 variants: {out['rss_mb']:.0f} MB")


@pytest.mark.slow
def test_serving_litert_variants_never_imports_torch_even_when_installed(
    weights_dir: Path, mirror_dir: Path, images_dir: Path
) -> None:
    out = _probe("installed", weights_dir, mirror_dir, images_dir / "cat.bmp")
    assert out["heavy"] == [], "serving LiteRT variants imported " + ", ".join(out["heavy"])
    assert out["backends"] == ["litert"] and len(out["variants"]) == 7
    assert out["top"]["index"] == EGYPTIAN_CAT


@pytest.mark.slow
@pytest.mark.skipif(gpu_possible(), reason="this host has a GPU device node")
def test_device_auto_on_a_host_without_a_gpu_never_imports_torch(
    weights_dir: Path, mirror_dir: Path, images_dir: Path
) -> None:
    """The default MOBILENET_DEVICE=auto with torch installed (this venv): no GPU device
    node, so CPU without importing torch to ask (it cost ~550 MB of RSS per replica)."""
    out = _probe("installed", weights_dir, mirror_dir, images_dir / "cat.bmp", device="auto")
    assert out["heavy"] == [], "device=auto imported " + ", ".join(out["heavy"])
    assert out["backends"] == ["litert"] and len(out["variants"]) == 7
    assert out["rss_mb"] < RSS_LIMIT_MB, out["rss_mb"]


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"backend": "torch"}, "MOBILENET_BACKEND=torch"),
        ({"backend": "onnx"}, "MOBILENET_BACKEND=onnx"),
        ({"device": "cuda"}, "MOBILENET_DEVICE=cuda"),
        ({"variants": ["v1-0.25-128", "v2-1.0-224-torchvision"]}, "v2-1.0-224-torchvision"),
    ],
)
def test_asking_for_torch_without_it_fails_at_start_naming_the_extra(
    overrides: dict, named: str, weights_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import app.inference.select as select

    assert "v2-1.0-224-torchvision" in SPECS_BY_NAME
    monkeypatch.setattr(select, "torch_available", lambda: False)
    service = ClassifierService(Settings(weights_dir=weights_dir, **overrides))
    try:
        with pytest.raises(select.TorchMissing) as caught:
            service.variant_names()
    finally:
        service.decode_pool.shutdown()
        service.inference_pool.shutdown()
    assert named in caught.value.message
    assert "pip install 'mobilenet-serve[torch]'" in caught.value.message


def test_without_torch_all_means_the_tf_variants_and_torchvision_ones_fail_clearly(
    tmp_path: Path, mirror_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import app.weights.fetch as fetch

    monkeypatch.setattr(fetch, "torch_available", lambda: False)
    tv = next(s for s in SPECS if s.origin == "torchvision")
    [result] = fetch_variants([tv], weights_dir=tmp_path, mirror=mirror_dir, progress=False)
    assert result.status == "failed" and "mobilenet-serve[torch]" in result.message
    assert not (tmp_path / store.MANIFEST).exists()
