"""A protocol request carrying one image (most of them) runs to completion on LiteRT, as a
``/predict`` upload does: no batcher hand-off, the same probabilities, the same errors and
metrics as the batch path. In-process app (``app_client``), both paths side by side."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest

V3 = "v3-small-1.0-224"


def oip_infer(client: Any, model: str, image: bytes) -> Any:
    body = {
        "inputs": [
            {
                "name": "IMAGE",
                "shape": [1],
                "datatype": "BYTES",
                "data": [base64.b64encode(image).decode()],
            }
        ]
    }
    return client.post(f"/v2/models/{model}/infer", json=body)


def tf_serving_predict(client: Any, model: str, image: bytes) -> Any:
    body = {"instances": [{"b64": base64.b64encode(image).decode()}]}
    return client.post(f"/v1/models/{model}:predict", json=body)


@pytest.fixture
def paths(app_client: Any, monkeypatch: Any) -> Any:
    """Switch run to completion on or off; with it on, the batcher must not be used."""
    service = app_client.app.state.service
    batcher = service.registry.variants[V3].batcher

    original = batcher.submit_many

    async def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a one-image request reached the batcher")

    def switch(on: bool) -> None:
        monkeypatch.setattr(service.settings, "run_to_completion", on)
        monkeypatch.setattr(batcher, "submit_many", refuse if on else original)

    return switch


def client_batches(app_client: Any) -> tuple[float, float]:
    """(count, sum) of this variant's client-batch histogram."""
    metrics = app_client.app.state.service.metrics
    samples = {
        s.name: s.value
        for m in metrics.client_batch.collect()
        for s in m.samples
        if s.labels.get("variant") == V3
    }
    return samples["mobilenet_client_batch_images_count"], samples[
        "mobilenet_client_batch_images_sum"
    ]


def test_one_oip_image_runs_to_completion_with_the_batch_paths_probabilities(
    app_client: Any, paths: Any, cat: bytes
) -> None:
    paths(False)
    batched = oip_infer(app_client, "v3", cat)
    assert batched.status_code == 200, batched.text
    paths(True)
    before = client_batches(app_client)
    direct = oip_infer(app_client, "v3", cat)
    assert direct.status_code == 200, direct.text
    count, total = client_batches(app_client)
    assert (count - before[0], total - before[1]) == (1, 1)  # still one client batch of 1

    def probs(r: Any) -> np.ndarray:
        (out,) = r.json()["outputs"]
        assert out["name"] == "PROBABILITIES" and out["shape"] == [1, 1000]
        return np.asarray(out["data"], dtype=np.float32)

    a, b = probs(batched), probs(direct)
    np.testing.assert_allclose(b, a, atol=1e-6)
    assert int(b.argmax()) == 285  # Egyptian cat


def test_one_tf_serving_instance_runs_to_completion_with_the_same_top5(
    app_client: Any, paths: Any, cat: bytes
) -> None:
    paths(False)
    batched = tf_serving_predict(app_client, "v3", cat)
    paths(True)
    direct = tf_serving_predict(app_client, "v3", cat)
    assert batched.status_code == direct.status_code == 200, (batched.text, direct.text)
    (row_a,), (row_b,) = batched.json()["predictions"], direct.json()["predictions"]
    assert row_b["classes"] == row_a["classes"] and row_b["labels"][0] == "Egyptian cat"
    np.testing.assert_allclose(row_b["scores"], row_a["scores"], atol=1e-5)


@pytest.mark.parametrize("send", [oip_infer, tf_serving_predict], ids=["oip", "tf_serving"])
def test_a_bad_single_image_gets_the_batch_paths_error(
    app_client: Any, paths: Any, cat: bytes, send: Any
) -> None:
    broken = cat[: len(cat) // 3]
    paths(False)
    batched = send(app_client, "v3", broken)
    paths(True)
    direct = send(app_client, "v3", broken)
    assert batched.status_code == direct.status_code == 400
    assert direct.json() == batched.json()
    assert "image 0 of 1" in direct.text
