"""Import Google's quantization-aware TF Lite MobileNet releases into the torch family.

The ``.tflite`` flatbuffer is read with the ``tflite`` package (generated from the
official schema). Weights are dequantized (``w = scale * (q - zero_point)``, per tensor
or per channel; int32 biases with their own scale) and mapped, in execution order, onto
the convolution/linear layers of the same architecture built by ``app.models``. Batch
norm is folded into the conv bias upstream, so each BN becomes an identity plus bias.
Activations are taken from the architecture, never from the file's fused-activation
field, which older TOCO-converted files leave at NONE.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tflite
import torch
from tflite.BuiltinOperator import BuiltinOperator
from tflite.TensorType import TensorType
from torch import nn

from app.errors import WeightsError

_OP_NAMES = {v: k for k, v in vars(BuiltinOperator).items() if not k.startswith("_")}
_NP_TYPES = {
    TensorType.UINT8: np.uint8,
    TensorType.INT8: np.int8,
    TensorType.INT32: np.int32,
    TensorType.FLOAT32: np.float32,
    TensorType.INT64: np.int64,
    TensorType.INT16: np.int16,
}
PARAMETRIC_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


@dataclass(frozen=True)
class Quant:
    """Affine quantization of one tensor (``axis`` is set for per-channel)."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int = 0


@dataclass(frozen=True)
class Layer:
    """One parametric op's float weights, already in PyTorch layout."""

    op: str
    weight: np.ndarray  # OIHW for convs (depthwise: [C, 1, H, W]); [O, I] for fully connected
    bias: np.ndarray | None
    output_quant: Quant | None


class TfliteGraph:
    """The one subgraph of a ``.tflite`` file: ops in execution order and their tensors."""

    def __init__(self, data: bytes) -> None:
        try:
            self._model = tflite.Model.GetRootAsModel(data, 0)
            self._graph = self._model.Subgraphs(0)
        except Exception as exc:  # flatbuffers raises bare errors on garbage
            raise WeightsError(f"not a readable TF Lite flatbuffer: {exc}") from exc
        if self._graph is None:
            raise WeightsError("TF Lite file has no subgraph")

    def ops(self) -> list[tuple[str, list[int], list[int]]]:
        """``(op name, input tensor ids, output tensor ids)`` in execution order."""
        out = []
        for i in range(self._graph.OperatorsLength()):
            op = self._graph.Operators(i)
            code = self._model.OperatorCodes(op.OpcodeIndex())
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            out.append(
                (
                    _OP_NAMES.get(builtin, str(builtin)),
                    [int(t) for t in op.InputsAsNumpy()],
                    [int(t) for t in op.OutputsAsNumpy()],
                )
            )
        return out

    def shape(self, index: int) -> tuple[int, ...]:
        return tuple(int(d) for d in self._graph.Tensors(index).ShapeAsNumpy())

    def quant(self, index: int) -> Quant | None:
        q = self._graph.Tensors(index).Quantization()
        if q is None or q.ScaleLength() == 0:
            return None
        return Quant(
            scale=q.ScaleAsNumpy().astype(np.float64),
            zero_point=q.ZeroPointAsNumpy().astype(np.float64),
            axis=int(q.QuantizedDimension()),
        )

    def input_quant(self) -> Quant | None:
        return self.quant(int(self._graph.Inputs(0)))

    def input_shape(self) -> tuple[int, ...]:
        return self.shape(int(self._graph.Inputs(0)))

    def tensor(self, index: int) -> np.ndarray:
        """A constant tensor, dequantized to float32 if it is quantized."""
        t = self._graph.Tensors(index)
        raw = self._model.Buffers(t.Buffer()).DataAsNumpy()
        if not isinstance(raw, np.ndarray) or raw.size == 0:
            raise WeightsError(f"tensor {t.Name().decode()!r} has no constant data")
        dtype = _NP_TYPES.get(t.Type())
        if dtype is None:
            raise WeightsError(f"tensor {t.Name().decode()!r} has unsupported type {t.Type()}")
        values = np.frombuffer(raw.tobytes(), dtype=dtype).reshape(self.shape(index))
        quant = self.quant(index)
        if quant is None or dtype == np.float32:
            return values.astype(np.float32)
        return dequantize(values, quant)

    def layers(self) -> list[Layer]:
        """The parametric ops' weights, in execution order, in PyTorch layout."""
        layers = []
        for name, inputs, outputs in self.ops():
            if name not in PARAMETRIC_OPS:
                continue
            w = self.tensor(inputs[1])
            bias = self.tensor(inputs[2]) if len(inputs) > 2 and inputs[2] >= 0 else None
            if name == "CONV_2D":  # OHWI -> OIHW
                w = w.transpose(0, 3, 1, 2)
            elif name == "DEPTHWISE_CONV_2D":  # [1, H, W, C] -> [C, 1, H, W]
                w = w.transpose(3, 0, 1, 2)
            layers.append(
                Layer(
                    op=name,
                    weight=np.ascontiguousarray(w),
                    bias=bias,
                    output_quant=self.quant(outputs[0]),
                )
            )
        return layers


def dequantize(values: np.ndarray, quant: Quant) -> np.ndarray:
    """``scale * (q - zero_point)``, per tensor or along ``quant.axis`` per channel."""
    scale, zero = quant.scale, quant.zero_point
    if scale.size > 1:
        shape = [1] * values.ndim
        shape[quant.axis] = scale.size
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return (scale * (values.astype(np.float64) - zero)).astype(np.float32)


@dataclass(frozen=True)
class _Slot:
    """Where one parametric layer lands in the torch model."""

    weight_key: str
    bias_key: str | None  # the layer's own bias (SE convs, classifier)
    bn_prefix: str | None  # the BN that follows a bias-free conv
    shape: tuple[int, ...]


def _slots(model: nn.Module) -> list[_Slot]:
    """Conv/linear layers of ``model`` in forward order, each with its bias or BN."""
    modules = list(model.named_modules())
    slots = []
    for i, (name, module) in enumerate(modules):
        if not isinstance(module, nn.Conv2d | nn.Linear):
            continue
        bn = None
        if module.bias is None:
            nxt = modules[i + 1] if i + 1 < len(modules) else None
            if nxt is None or not isinstance(nxt[1], nn.BatchNorm2d):
                raise WeightsError(f"layer {name} has neither a bias nor a following BN")
            bn = nxt[0]
        slots.append(
            _Slot(
                weight_key=f"{name}.weight",
                bias_key=f"{name}.bias" if module.bias is not None else None,
                bn_prefix=bn,
                shape=tuple(module.weight.shape),
            )
        )
    return slots


def tflite_state_dict(
    model: nn.Module, graphs: list[TfliteGraph], *, drop_background: bool = True
) -> dict[str, torch.Tensor]:
    """A complete state_dict for ``model`` from one or more chained TF Lite graphs.

    Several graphs are concatenated in order (V1 1.0/224 ships as a feature extractor
    plus a logits head). With ``drop_background`` the last layer's class 0 (TF's
    ``background``) is removed, so the model answers in the 1000-class ImageNet space.
    """
    layers = [layer for g in graphs for layer in g.layers()]
    slots = _slots(model)
    if len(layers) != len(slots):
        raise WeightsError(
            f"the TF Lite file has {len(layers)} conv/linear layers, "
            f"the architecture has {len(slots)}: wrong variant for this file?"
        )
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for index, (layer, slot) in enumerate(zip(layers, slots, strict=True)):
        weight, bias = layer.weight, layer.bias
        if bias is None:
            bias = np.zeros(weight.shape[0], dtype=np.float32)
        if index == len(slots) - 1 and drop_background:
            weight, bias = weight[1:], bias[1:]
        if len(slot.shape) == 2 and weight.ndim == 4:  # 1x1 conv head -> nn.Linear
            weight = weight.reshape(weight.shape[0], -1)
        if tuple(weight.shape) != slot.shape:
            raise WeightsError(
                f"layer {index} ({layer.op}) has shape {tuple(weight.shape)}, "
                f"{slot.weight_key} expects {slot.shape}"
            )
        state[slot.weight_key] = torch.from_numpy(np.ascontiguousarray(weight))
        if slot.bias_key is not None:
            state[slot.bias_key] = torch.from_numpy(np.ascontiguousarray(bias))
        else:
            c = weight.shape[0]
            state[f"{slot.bn_prefix}.weight"] = torch.ones(c)
            state[f"{slot.bn_prefix}.bias"] = torch.from_numpy(np.ascontiguousarray(bias))
            state[f"{slot.bn_prefix}.running_mean"] = torch.zeros(c)
            state[f"{slot.bn_prefix}.running_var"] = torch.ones(c)
    return state
