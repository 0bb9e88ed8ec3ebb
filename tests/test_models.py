"""The MobileNet family's architectures: sizes, channel plans, shapes, checkpoint keys and
TensorFlow 'SAME' padding."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from app.models import ARCHS, MobileNetV1, build_model, count_parameters
from app.models.layers import Conv2dSame, tf_same_pads, use_tf_same_padding

torch.set_num_threads(2)

# Published parameter counts of the width-1.0 networks (papers / torchvision docs), millions.
PUBLISHED_1_0 = {"v1": 4.2, "v2": 3.5, "v3-large": 5.5, "v3-small": 2.5}
# TF-slim's mobilenet_v1.md table: MobileNet_v1_<alpha>_224, million parameters.
SLIM_V1 = {1.0: 4.24, 0.75: 2.59, 0.5: 1.34, 0.25: 0.47}
LAST_CHANNELS = {"v1": 1024, "v2": 1280, "v3-small": 576, "v3-large": 960}
V1_PLAN = (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)
V1_STRIDES = (2, 1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1)  # stem, then blocks 1..13


def _params(arch: str, width: float = 1.0) -> int:
    return count_parameters(build_model(arch, width=width))


# --- sizes -------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_width_1_parameter_counts_match_the_published_ones(arch: str) -> None:
    millions = _params(arch) / 1e6
    assert millions == pytest.approx(PUBLISHED_1_0[arch], rel=0.03)


@pytest.mark.parametrize("alpha", sorted(SLIM_V1))
def test_v1_parameter_counts_match_tf_slim(alpha: float) -> None:
    # Slim counts 1001 classes; the 1024*alpha extra weights are far below the tolerance.
    assert _params("v1", alpha) / 1e6 == pytest.approx(SLIM_V1[alpha], rel=0.03)


@pytest.mark.parametrize("alpha", [0.25, 0.5, 0.75])
def test_v1_shrinks_as_alpha_squared(alpha: float) -> None:
    full, thin = build_model("v1"), build_model("v1", width=alpha)
    # The conv body is dominated by pointwise convs (c_in * c_out): ~alpha^2, a bit more
    # for the depthwise convs that scale only linearly.
    body = count_parameters(thin.features) / count_parameters(full.features)
    assert alpha**2 <= body <= 1.1 * alpha**2
    # The classifier (1024 * alpha * 1000) is linear in alpha: the whole net is in between.
    whole = count_parameters(thin) / count_parameters(full)
    assert alpha**2 < whole < alpha


@pytest.mark.parametrize("arch", ["v2", "v3-small", "v3-large"])
def test_v2_v3_shrink_roughly_as_alpha_squared(arch: str) -> None:
    full = build_model(arch)
    previous = count_parameters(full)
    for alpha in (0.75, 0.5):
        thin = build_model(arch, width=alpha)
        body = count_parameters(thin.features) / count_parameters(full.features)
        # Channels are rounded up to multiples of 8: never below alpha^2, not far above.
        assert alpha**2 <= body <= 1.3 * alpha**2, (alpha, body)
        total = count_parameters(thin)
        assert total < previous
        previous = total


# --- V1's layout ------------------------------------------------------------------------
def _v1_convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize(
    ("alpha", "plan"),
    [
        (1.0, V1_PLAN),
        (0.75, (24, 48, 96, 96, 192, 192, *[384] * 6, 768, 768)),
        (0.5, (16, 32, 64, 64, 128, 128, *[256] * 6, 512, 512)),
        (0.25, (8, 16, 32, 32, 64, 64, *[128] * 6, 256, 256)),
        # int() truncates (32 * 0.3 = 9.6 -> 9) and nothing goes below 8 channels.
        (0.3, (9, 19, 38, 38, 76, 76, *[153] * 6, 307, 307)),
        (0.1, (8, 8, 12, 12, 25, 25, *[51] * 6, 102, 102)),
    ],
)
@pytest.mark.parametrize("origin", ["torchvision", "tflite"])
def test_v1_channel_plan_and_strides(alpha: float, plan: tuple[int, ...], origin: str) -> None:
    model = build_model("v1", width=alpha, origin=origin)
    assert isinstance(model, MobileNetV1)
    convs = _v1_convs(model)
    assert len(convs) == 1 + 2 * 13
    stem, blocks = convs[0], convs[1:]
    assert (stem.in_channels, stem.out_channels) == (3, plan[0])
    assert stem.kernel_size == (3, 3) and stem.stride == (2, 2)
    channels = plan[0]
    for i in range(13):
        dw, pw = blocks[2 * i], blocks[2 * i + 1]
        assert dw.groups == dw.in_channels == dw.out_channels == channels
        assert dw.kernel_size == (3, 3)
        assert dw.stride == (V1_STRIDES[i + 1],) * 2, f"block {i + 1}"
        assert pw.kernel_size == (1, 1) and pw.stride == (1, 1) and pw.groups == 1
        assert (pw.in_channels, pw.out_channels) == (channels, plan[i + 1])
        channels = pw.out_channels
    assert model.classifier[-1].in_features == plan[-1] == model.last_channel
    acts = [m for m in model.features.modules() if isinstance(m, nn.ReLU6)]
    assert len(acts) == 27


def test_v1_stride_2_blocks_are_2_4_6_12() -> None:
    assert [i for i, s in enumerate(V1_STRIDES) if s == 2] == [0, 2, 4, 6, 12]
    assert math.prod(V1_STRIDES) == 32


# --- shapes -------------------------------------------------------------------------------
@pytest.mark.parametrize("origin", ["torchvision", "tflite"])
@pytest.mark.parametrize("arch", ARCHS)
def test_output_shapes(arch: str, origin: str) -> None:
    model = build_model(arch, origin=origin)
    assert not model.training
    seen: list[torch.Size] = []
    model.features.register_forward_hook(lambda _m, _i, out: seen.append(out.shape))
    for res in (128, 160, 192, 224):
        with torch.no_grad():
            logits = model(torch.randn(1, 3, res, res))
        side = math.ceil(res / 32)
        assert seen.pop() == (1, LAST_CHANNELS[arch], side, side), res
        assert logits.shape == (1, 1000)
        assert torch.isfinite(logits).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_num_classes(arch: str) -> None:
    model = build_model(arch, num_classes=1001, width=0.5)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 96, 96)).shape == (1, 1001)


def test_unknown_arch_is_refused() -> None:
    with pytest.raises(ValueError, match="v4"):
        build_model("v4")  # type: ignore[arg-type]


# --- torchvision checkpoints load unchanged -----------------------------------------------
TORCHVISION_BUILDERS = {
    "v2": torchvision.models.mobilenet_v2,
    "v3-small": torchvision.models.mobilenet_v3_small,
    "v3-large": torchvision.models.mobilenet_v3_large,
}


@pytest.mark.parametrize("arch", sorted(TORCHVISION_BUILDERS))
def test_torchvision_state_dict_loads_strictly(arch: str) -> None:
    torch.manual_seed(0)
    reference = TORCHVISION_BUILDERS[arch](weights=None).eval()
    with torch.no_grad():  # non-trivial BN statistics, so the check covers buffers too
        for m in reference.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    state = reference.state_dict()
    x = torch.randn(1, 3, 160, 160)

    ours = build_model(arch, origin="torchvision")
    ours.load_state_dict(state, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(ours.features(x), reference.features(x), rtol=0, atol=0)
        torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=0)

    tf = build_model(arch, origin="tflite")
    assert list(tf.state_dict()) == list(state)
    tf.load_state_dict(state, strict=True)
    for key, value in tf.state_dict().items():
        assert torch.equal(value, state[key]), key
    with torch.no_grad():  # loads and runs, but its stem pads like TF: not identical
        assert tf(x).shape == (1, 1000)
        stem, ref_stem = tf.features[0](x), reference.features[0](x)
    assert stem.shape == ref_stem.shape
    assert not torch.allclose(stem, ref_stem, atol=1e-3)


@pytest.mark.parametrize("arch", ARCHS)
def test_tflite_origin_layers(arch: str) -> None:
    tf, tv = build_model(arch, origin="tflite"), build_model(arch, origin="torchvision")
    assert list(tf.state_dict()) == list(tv.state_dict())
    assert count_parameters(tf) == count_parameters(tv)
    bns = [m for m in tf.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.eps == 0.0 for m in bns)
    assert all(m.eps > 0 for m in tv.modules() if isinstance(m, nn.BatchNorm2d))
    for m in tf.modules():
        if isinstance(m, nn.Conv2d):
            assert isinstance(m, Conv2dSame) == (max(m.stride) > 1)
    assert not any(isinstance(m, Conv2dSame) for m in tv.modules())


# --- TensorFlow 'SAME' padding ------------------------------------------------------------
def _tf_reference_pads(size: int, kernel: int, stride: int, dilation: int = 1):
    """TF's documented rule (tensorflow/core/framework/kernel_shape_util / nn docs)."""
    k = (kernel - 1) * dilation + 1
    total = max(k - stride, 0) if size % stride == 0 else max(k - size % stride, 0)
    return total // 2, total - total // 2


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "expected"),
    [
        (224, 3, 2, (0, 1)),
        (224, 5, 2, (1, 2)),
        (225, 3, 2, (1, 1)),
        (225, 5, 2, (2, 2)),
        (7, 3, 2, (1, 1)),
        (8, 3, 2, (0, 1)),
        (224, 3, 1, (1, 1)),
        (224, 5, 1, (2, 2)),
        (225, 3, 1, (1, 1)),
        (224, 1, 1, (0, 0)),
        (224, 1, 2, (0, 0)),
        (1, 3, 2, (1, 1)),
    ],
)
def test_tf_same_pads_known_cases(size: int, kernel: int, stride: int, expected) -> None:
    assert tf_same_pads(size, kernel=kernel, stride=stride) == expected


def test_tf_same_pads_matches_tfs_rule_everywhere() -> None:
    for size in range(1, 70):
        for kernel in (1, 2, 3, 5, 7):
            for stride in (1, 2, 3):
                for dilation in (1, 2):
                    pads = tf_same_pads(size, kernel=kernel, stride=stride, dilation=dilation)
                    assert pads == _tf_reference_pads(size, kernel, stride, dilation), (
                        size,
                        kernel,
                        stride,
                        dilation,
                    )
                    # 'SAME' means the output is ceil(size / stride) long.
                    k = (kernel - 1) * dilation + 1
                    out = (size + sum(pads) - k) // stride + 1
                    assert out == math.ceil(size / stride)


@pytest.mark.parametrize(
    ("kernel", "stride", "groups", "shape", "pads"),
    [
        # (left, right, top, bottom) written out by hand, TF's way: extra pixel after.
        (3, 2, 1, (16, 16), (0, 1, 0, 1)),
        (5, 2, 1, (16, 16), (1, 2, 1, 2)),
        (3, 2, 1, (15, 16), (0, 1, 1, 1)),  # odd height, even width
        (3, 2, 8, (20, 21), (1, 1, 0, 1)),  # depthwise, even height, odd width
        (3, 1, 1, (16, 16), (1, 1, 1, 1)),
    ],
)
def test_conv2d_same_equals_explicit_pad_then_conv(kernel, stride, groups, shape, pads) -> None:
    torch.manual_seed(0)
    conv = Conv2dSame(8, 8, kernel, stride=stride, groups=groups, bias=True)
    x = torch.randn(2, 8, *shape)
    explicit = nn.Conv2d(8, 8, kernel, stride=stride, groups=groups, padding=0)
    explicit.load_state_dict(conv.state_dict())
    with torch.no_grad():
        expected = explicit(F.pad(x, pads))
        got = conv(x)
    assert got.shape[-2:] == (math.ceil(shape[0] / stride), math.ceil(shape[1] / stride))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_conv2d_same_differs_from_symmetric_padding_only_on_even_inputs() -> None:
    torch.manual_seed(0)
    conv = Conv2dSame(4, 4, 3, stride=2)
    sym = nn.Conv2d(4, 4, 3, stride=2, padding=1)
    sym.load_state_dict(conv.state_dict())
    with torch.no_grad():
        even, odd = torch.randn(1, 4, 16, 16), torch.randn(1, 4, 17, 17)
        assert conv(even).shape == sym(even).shape
        assert not torch.allclose(conv(even), sym(even))
        torch.testing.assert_close(conv(odd), sym(odd), rtol=0, atol=0)
        # The first output pixel sees rows/cols 0..2 of the input: no padding before.
        first = F.conv2d(even[:, :, :3, :3], conv.weight, conv.bias)
        torch.testing.assert_close(conv(even)[:, :, :1, :1], first, rtol=1e-6, atol=1e-6)


def test_use_tf_same_padding_keeps_keys_and_shares_parameters() -> None:
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(weights=None).eval()
    before = model.state_dict()
    ptrs = {k: v.data_ptr() for k, v in before.items()}
    strided = sum(1 for m in model.modules() if type(m) is nn.Conv2d and max(m.stride) > 1)
    plain = sum(1 for m in model.modules() if type(m) is nn.Conv2d and max(m.stride) == 1)
    assert use_tf_same_padding(model) is model
    after = model.state_dict()
    assert list(after) == list(before)
    for key, value in after.items():
        assert value.data_ptr() == ptrs[key], key
        assert torch.equal(value, before[key])
    assert sum(1 for m in model.modules() if type(m) is Conv2dSame) == strided > 0
    assert sum(1 for m in model.modules() if type(m) is nn.Conv2d) == plain
    with torch.no_grad():
        assert model(torch.randn(1, 3, 96, 96)).shape == (1, 1000)
