"""Drive a running server with the ``kserve`` SDK's clients; print one JSON line of results.

Run by tests/test_protocols_kserve_sdk.py with a Python that has ``kserve`` installed
(its dependencies clash with this project's venv, so it lives in a venv of its own):

    python tests/clients/kserve_sdk.py HTTP_URL GRPC_ADDRESS IMAGE_PATH
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput


def v2_request(model: str, images: list[bytes], *, binary: bool, k: int | None) -> InferRequest:
    inp = InferInput("IMAGE", [len(images)], "BYTES")
    if binary:
        inp.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=True)
    else:  # JSON: base64 text per image
        text = [base64.b64encode(x).decode() for x in images]
        inp.set_data_from_numpy(np.array(text, dtype=np.object_), binary_data=False)
    outputs = None
    if k is not None:
        outputs = [RequestedOutput("PROBABILITIES", parameters={"classification": k})]
    return InferRequest(model_name=model, infer_inputs=[inp], request_outputs=outputs)


def top1(probs: np.ndarray) -> dict[str, Any]:
    i = int(np.argmax(probs))
    return {"index": i, "score": float(probs[i])}


async def rest_v2(url: str, image: bytes) -> dict[str, Any]:
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
    out: dict[str, Any] = {
        "server_ready": await client.is_server_ready(url),
        "model_ready": await client.is_model_ready(url, "v3"),
    }
    for name in ("v3", "v1-0.5-160"):
        for binary in (True, False):
            res = await client.infer(
                url, v2_request(name, [image], binary=binary, k=None), model_name=name
            )
            out[f"{name}/{'binary' if binary else 'json'}"] = top1(res.outputs[0].as_numpy()[0])
    res = await client.infer(url, v2_request("v3", [image], binary=False, k=5), model_name="v3")
    out["classification"] = [str(x) for x in res.outputs[0].data]
    for case, model, data in (("unknown", "v9", image), ("corrupt", "v3", image[:200])):
        try:
            await client.infer(
                url, v2_request(model, [data], binary=True, k=None), model_name=model
            )
            out[case] = None
        except httpx.HTTPStatusError as exc:
            out[case] = {"status": exc.response.status_code, "message": str(exc)}
    await client.close()
    return out


async def rest_v1(url: str, image: bytes) -> dict[str, Any]:
    client = InferenceRESTClient(RESTConfig(protocol="v1", timeout=60))
    out: dict[str, Any] = {}
    b64 = base64.b64encode(image).decode()
    for name in ("v3", "v1-0.5-160"):
        res = await client.infer(
            url, {"instances": [{"image_bytes": {"b64": b64}}]}, model_name=name
        )
        out[name] = res["predictions"][0]
    for case, model, data in (("unknown", "v9", b64), ("corrupt", "v3", b64[:300])):
        try:
            await client.infer(url, {"instances": [{"b64": data}]}, model_name=model)
            out[case] = None
        except httpx.HTTPStatusError as exc:
            out[case] = {"status": exc.response.status_code, "message": str(exc)}
    await client.close()
    return out


async def grpc_v2(address: str, image: bytes) -> dict[str, Any]:
    client = InferenceGRPCClient(address, timeout=60, retries=2)
    out: dict[str, Any] = {
        "server_live": await client.is_server_live(),
        "model_ready": await client.is_model_ready("v3"),
    }
    for name in ("v3", "v1-0.5-160"):
        res = await client.infer(v2_request(name, [image], binary=True, k=None))
        out[name] = top1(res.outputs[0].as_numpy()[0])
    for case, model, data in (("unknown", "v9", image), ("corrupt", "v3", image[:200])):
        try:
            await client.infer(v2_request(model, [data], binary=True, k=None))
            out[case] = None
        except grpc.RpcError as exc:
            out[case] = {"status": exc.code().name, "message": exc.details()}
    await client.close()
    return out


async def main(url: str, address: str, image: bytes) -> None:
    result = {
        "rest_v2": await rest_v2(url, image),
        "rest_v1": await rest_v1(url, image),
        "grpc_v2": await grpc_v2(address, image),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], Path(sys.argv[3]).read_bytes()))
