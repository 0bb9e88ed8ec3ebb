"""ONNX Runtime backend (CPU): the same torch module, exported once at load time.

The exported graph includes the whole input path (uint8 NHWC -> float NCHW, scale and
shift) and the softmax, so ONNX Runtime receives the stacked batch as it is and returns
probabilities. Nothing is written to disk.
"""

from __future__ import annotations

import io
import threading
import warnings

import numpy as np
import torch
from torch import nn

from app.imaging.preprocess import Preprocessing
from app.inference.torch_backend import fold_batchnorm


def available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class _WithPreprocessing(nn.Module):
    """uint8 NHWC batch -> probabilities, so the runtime owns every step."""

    def __init__(self, model: nn.Module, pre: Preprocessing) -> None:
        super().__init__()
        self.model = model
        mean = torch.tensor(pre.mean, dtype=torch.float32)
        std = torch.tensor(pre.std, dtype=torch.float32)
        self.register_buffer("scale", (1 / (255 * std)).view(1, 3, 1, 1))
        self.register_buffer("shift", (-mean / std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2).float() * self.scale + self.shift
        return torch.softmax(self.model(x), dim=1)


def export_onnx(model: nn.Module, pre: Preprocessing) -> bytes:
    """The model with its input path and softmax as an ONNX graph (dynamic batch)."""
    wrapped = _WithPreprocessing(fold_batchnorm(model.eval()), pre).eval()
    example = torch.zeros(1, pre.size, pre.size, 3, dtype=torch.uint8)
    buf = io.BytesIO()
    # Conv2dSame computes its padding from the input size in Python: the trace records
    # it as a constant, which is right here because each variant has one resolution.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            wrapped,
            (example,),
            buf,
            input_names=["images"],
            output_names=["probs"],
            dynamic_axes={"images": {0: "n"}, "probs": {0: "n"}},
            opset_version=17,
            dynamo=False,
        )
    return buf.getvalue()


class OnnxBackend:
    """ONNX Runtime on CPU with a fixed thread budget."""

    name = "onnx"
    device = "cpu"
    precision = "fp32"

    def __init__(self, model: nn.Module, pre: Preprocessing, *, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle pool threads would otherwise spin between runs, taking the cores that
        # decode uploads (2 cores, v3-small, 720p, c=16: 2 spinning threads 115 req/s vs
        # 133 for 1 thread; with spinning off 2 threads give 130 vs 135, side by side).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(
            export_onnx(model, pre), options, providers=["CPUExecutionProvider"]
        )
        self.input_size = pre.size
        self._lock = threading.Lock()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            (probs,) = self._session.run(None, {"images": np.ascontiguousarray(batch)})
        return probs.astype(np.float32, copy=False)

    def warmup(self, batch_sizes: list[int]) -> None:
        for n in batch_sizes:
            self.predict(np.zeros((n, self.input_size, self.input_size, 3), dtype=np.uint8))
