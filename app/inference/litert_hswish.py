"""Exact, fast hard-swish for uint8 TF Lite graphs (MobileNet V3).

Why: LiteRT's XNNPACK delegate runs every uint8 op of V3-Small except ``HARD_SWISH``,
which falls back to TFLite's scalar reference kernel: 68 % of a V3-Small forward on this
CPU (py-spy), and 19 breaks in the delegated graph.

What: a uint8 hard-swish is a function of one byte, fixed by its two quantization
parameter pairs. Each such op becomes ``DEQUANTIZE -> HARD_SWISH (float) -> MUL c ->
ADD d -> QUANTIZE``, all run by XNNPACK. Plain float hard-swish rounds a few of the 256
codes one step away from the reference kernel's fixed-point arithmetic, so ``c`` (a
scale within about 1e-3 of 1) and ``d`` (a fraction of an output step) are searched until
the chain gives the reference byte for every one of the 256 input codes. Nothing is
taken on trust: both tables are read from this machine's runtime (a one-op model run on
all 256 codes), an op whose chain can't be made exact keeps the original kernel, and
``LiteRTBackend`` compares the rewritten graph with the stock one, bit for bit, before it
uses it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_F32 = np.float32
# Scales tried: 1 + k * 2**-19 for |k| <= _C_STEPS (about +-1.1 %), nearest 1 first.
_C_STEPS = 6000
# Offsets tried: j / 128 of an output step for |j| <= _D_STEPS, nearest 0 first.
_D_STEPS = 40
_CANDIDATES = 3  # chains verified per op before it keeps the original kernel


@dataclass(frozen=True)
class RewriteReport:
    """How many uint8 hard-swish ops there were and how many now run on XNNPACK."""

    hard_swish: int
    replaced: int


def _schema() -> tuple[Any, Any]:
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils as fu

    return fb, fu


def _opcode(model: Any, code: int) -> int:
    """Index of builtin ``code`` in the model's operator codes, added if missing."""
    fb, _ = _schema()
    for i, oc in enumerate(model.operatorCodes):
        if max(oc.builtinCode, oc.deprecatedBuiltinCode) == code:
            return i
    model.operatorCodes.append(
        fb.OperatorCodeT(deprecatedBuiltinCode=min(code, 127), builtinCode=code, version=1)
    )
    return len(model.operatorCodes) - 1


def _op(model: Any, code: int, inputs: list[int], outputs: list[int], options: Any = None) -> Any:
    """One builtin operator; ``options`` is its ``XOptionsT`` where the op has one (the
    schema's union tag ``BuiltinOptions.XOptions`` is named after it)."""
    fb, _ = _schema()
    kind = getattr(fb.BuiltinOptions, type(options).__name__[:-1]) if options else 0
    return fb.OperatorT(
        opcodeIndex=_opcode(model, code),
        inputs=inputs,
        outputs=outputs,
        builtinOptionsType=kind,
        builtinOptions=options,
    )


def _tensor(
    model: Any, sg: Any, proto: Any, *, name: str, data: np.ndarray | None = None, **changes: Any
) -> int:
    """Append a tensor like ``proto`` (with ``changes``) and its own buffer; its index."""
    fb, _ = _schema()
    t = copy.deepcopy(proto) if proto is not None else fb.TensorT()
    for key, value in changes.items():
        setattr(t, key, value)
    model.buffers.append(fb.BufferT(data=data))
    t.buffer = len(model.buffers) - 1
    t.name = name.encode()
    sg.tensors.append(t)
    return len(sg.tensors) - 1


def _chain(model: Any, sg: Any, tin: int, tout: int, c: float, d: float, tag: str) -> list[Any]:
    """The five float ops that replace ``HARD_SWISH(tin) -> tout``."""
    fb, _ = _schema()
    op = fb.BuiltinOperator
    float_like = {"type": fb.TensorType.FLOAT32, "quantization": None}
    a, b, m, s = (
        _tensor(model, sg, sg.tensors[tin], name=f"{tag}/{n}", **float_like)
        for n in ("dequantized", "hard_swish", "scaled", "shifted")
    )
    scalar = {"shape": np.array([1], np.int32), "shapeSignature": None, **float_like}
    kc = _tensor(model, sg, None, name=f"{tag}/c", data=_bytes(c), **scalar)
    kd = _tensor(model, sg, None, name=f"{tag}/d", data=_bytes(d), **scalar)
    return [
        _op(model, op.DEQUANTIZE, [tin], [a]),
        _op(model, op.HARD_SWISH, [a], [b]),
        _op(model, op.MUL, [b, kc], [m], fb.MulOptionsT()),
        _op(model, op.ADD, [m, kd], [s], fb.AddOptionsT()),
        _op(model, op.QUANTIZE, [s], [tout]),
    ]


def _bytes(value: float) -> np.ndarray:
    return np.frombuffer(np.array([value], _F32).tobytes(), np.uint8).copy()


def _probe(tin: Any, tout: Any, *, chain: tuple[float, float] | None) -> np.ndarray:
    """All 256 input codes through the original op (builtin kernels) or through the
    float chain (XNNPACK, as in the rewritten graph); the 256 output codes."""
    fb, fu = _schema()
    model = fb.ModelT()
    model.version = 3
    model.operatorCodes, model.buffers = [], [fb.BufferT()]
    sg = fb.SubGraphT()
    sg.tensors, sg.operators = [], []
    shape = {"shape": np.array([1, 256], np.int32), "shapeSignature": None}
    i = _tensor(model, sg, tin, name="in", **shape)
    o = _tensor(model, sg, tout, name="out", **shape)
    sg.inputs, sg.outputs = [i], [o]
    if chain is None:
        sg.operators = [_op(model, fb.BuiltinOperator.HARD_SWISH, [i], [o])]
    else:
        sg.operators = _chain(model, sg, i, o, *chain, tag="probe")
    model.subgraphs = [sg]
    from app.inference.litert_backend import interpreter

    it = interpreter(bytes(fu.convert_object_to_bytearray(model)), builtin=chain is None)
    it.set_tensor(it.get_input_details()[0]["index"], np.arange(256, dtype=np.uint8)[None])
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"]).reshape(-1).copy()


def _candidates(tin: Any, tout: Any, reference: np.ndarray) -> list[tuple[float, float]]:
    """(c, d) pairs whose float emulation of the chain matches ``reference`` on all 256
    codes: for the first offset that has any, the middle of the run of good scales
    (widest margin) and its neighbours."""
    (si,), (zi,) = tin.quantization.scale, tin.quantization.zeroPoint
    (so,), (zo,) = tout.quantization.scale, tout.quantization.zeroPoint
    v = (np.arange(256, dtype=np.int32) - int(zi)).astype(_F32) * _F32(si)
    y = v * np.clip(v * _F32(1 / 6) + _F32(0.5), _F32(0), _F32(1))
    scales = (1 + np.arange(-_C_STEPS, _C_STEPS + 1) * 2.0**-19).astype(_F32)
    inv = _F32(1) / _F32(so)
    for j in sorted(range(-_D_STEPS, _D_STEPS + 1), key=abs):
        d = _F32(j * float(so) / 128)
        q = np.clip(np.rint((y[None, :] * scales[:, None] + d) * inv) + int(zo), 0, 255)
        good = np.flatnonzero((q == reference[None, :]).all(axis=1))
        if good.size:
            mid = good.size // 2
            picks = [
                good[mid],
                good[max(0, mid - good.size // 4)],
                good[min(good.size - 1, mid + good.size // 4)],
            ]
            return [(float(scales[k]), float(d)) for k in dict.fromkeys(picks)][:_CANDIDATES]
    return []


def rewrite(path: Path) -> tuple[bytes, RewriteReport]:
    """``path``'s graph with every uint8 ``HARD_SWISH`` that can be made exact on this
    machine replaced by its float chain; the others keep the original kernel."""
    fb, fu = _schema()
    model = fu.read_model(str(path))
    hswish, uint8 = _opcode(model, fb.BuiltinOperator.HARD_SWISH), fb.TensorType.UINT8
    found = replaced = 0
    for sg in model.subgraphs:
        ops: list[Any] = []
        for op in sg.operators:
            if op.opcodeIndex != hswish or sg.tensors[op.inputs[0]].type != uint8:
                ops.append(op)
                continue
            tin, tout = sg.tensors[op.inputs[0]], sg.tensors[op.outputs[0]]
            found += 1
            reference = _probe(tin, tout, chain=None)
            exact = next(
                (
                    cd
                    for cd in _candidates(tin, tout, reference)
                    if np.array_equal(_probe(tin, tout, chain=cd), reference)
                ),
                None,
            )
            if exact is None:
                ops.append(op)
                continue
            ops += _chain(
                model, sg, op.inputs[0], op.outputs[0], *exact, tag=f"exact_hard_swish_{found}"
            )
            replaced += 1
        sg.operators = ops
    return bytes(fu.convert_object_to_bytearray(model)), RewriteReport(found, replaced)
