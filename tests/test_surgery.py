"""Low-level surgery: shape reading, stride-free convolutions, swapping, implant search."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from btnet_adapters import surgery
from btnet_adapters.paths import build_view
from btnet_adapters.errors import ResolutionError, UnknownDownsamplingError


@pytest.mark.parametrize(
    "shape, side",
    [((1, 64, 28, 28), 28), ((1, 28, 28, 96), 28), ((1, 49, 32), 7), ((1, 50, 32), None), ((1, 512), None)],
)
def test_spatial_side_reads_nchw_nhwc_and_tokens(shape, side):
    assert surgery.spatial_side(torch.zeros(shape)) == side


@pytest.mark.parametrize("kernel, dilation", [(1, 1), (3, 1), (3, 2), (4, 1), (2, 1), (7, 1)])
def test_same_conv2d_matches_torch_same_padding(kernel, dilation):
    conv = nn.Conv2d(4, 6, kernel, stride=2, dilation=dilation, bias=True)
    reference = nn.Conv2d(4, 6, kernel, stride=1, dilation=dilation, padding="same", bias=True)
    reference.load_state_dict(conv.state_dict())
    x = torch.randn(2, 4, 9, 9)
    out = surgery.same_conv2d(x, conv)
    assert out.shape == (2, 6, 9, 9)
    torch.testing.assert_close(out, reference(x))


def test_stride_free_view_shares_weights_with_its_source():
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1)
    view = surgery.StrideFreeConv2d(conv)
    assert view.source is conv and view.source.weight is conv.weight  # registered (tracers see it), not copied
    with torch.no_grad():
        conv.weight.mul_(2)
    expected = nn.functional.conv2d(torch.ones(1, 3, 6, 6), conv.weight, conv.bias, 1, 1)
    torch.testing.assert_close(view(torch.ones(1, 3, 6, 6)), expected)


def test_stride_free_view_reads_geometry_through_with_stride_one():
    conv = nn.Conv2d(4, 8, (3, 5), stride=2, dilation=(1, 2), groups=2, padding_mode="reflect")
    view = surgery.StrideFreeConv2d(conv)
    assert (view.kernel_size, view.dilation, view.groups) == ((3, 5), (1, 2), 2)
    assert (view.in_channels, view.out_channels, view.padding_mode, view.stride) == (4, 8, "reflect", (1, 1))
    with pytest.raises(AttributeError):
        view.padding  # noqa: B018 - the view pads "same"; the source's padding would be wrong
    copied = copy.deepcopy(view)
    assert copied.kernel_size == (3, 5) and copied.source is not conv


def test_a_parent_reading_its_convs_kernel_size_runs_on_the_branch():
    class PadToKernel(nn.Module):  # DaViT's Downsample: pad to a multiple of the kernel, then conv
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, stride=2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            k = self.conv.kernel_size[0]
            return self.conv(nn.functional.pad(x, (k // 2,) * 4))

    net = nn.Sequential(PadToKernel(), nn.ReLU())
    view, _ = build_view(net, [("0.conv", surgery.StrideFreeConv2d)])
    out = view(torch.randn(1, 3, 7, 7))
    assert out.shape == (1, 8, 9, 9)  # the parent's own pad (1 each side) + same padding: no stride
    assert net(torch.randn(1, 3, 7, 7)).shape == (1, 8, 4, 4)  # the original keeps its stride


class _Toy(nn.Module):
    """stem (stride 2) → stage1 (Sequential of blocks, first strided) → stage2 (Sequential)."""

    def __init__(self, functional_pool: bool = False) -> None:
        super().__init__()
        self.functional_pool = functional_pool
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.stage1 = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.Conv2d(8, 8, 3, padding=1))
        self.stage2 = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.Conv2d(8, 8, 3, padding=1))

    def forward_features(self, x):
        x = self.stem(x)
        if self.functional_pool:
            x = nn.functional.avg_pool2d(x, 1)
        return self.stage2(self.stage1(x))


def _trace(model, size=32):
    root = nn.Module()
    root.trunk = model
    return surgery.trace_modules(root, lambda: model.forward_features(torch.randn(1, 3, size, size)), ["trunk"])


def test_find_implant_is_first_unit_of_the_stage_that_reaches_r():
    trace = _trace(_Toy())
    assert surgery.find_implant(trace, "trunk", 8) == ("trunk.stage1", "trunk.stage1.0")
    assert surgery.find_implant(trace, "trunk", 4) == ("trunk.stage2", "trunk.stage2.0")
    prefix = surgery.prefix_modules(trace, "trunk.stage2.0", "trunk")
    assert prefix == ["trunk.stem", "trunk.stage1", "trunk.stage2.0"]
    assert surgery.find_downsampling(trace, prefix) == [
        ("trunk.stem", "conv"), ("trunk.stage1.0", "conv"), ("trunk.stage2.0", "conv")
    ]
    with pytest.raises(ResolutionError):
        surgery.find_implant(trace, "trunk", 5)


def test_functional_downsampling_is_named():
    class Pooling(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Conv2d(8, 8, 1)

        def forward(self, x):
            return self.proj(nn.functional.max_pool2d(x, 2))

    toy = _Toy()
    toy.stage1[0] = Pooling()
    trace = _trace(toy)
    prefix = surgery.prefix_modules(trace, "trunk.stage1.0", "trunk")
    with pytest.raises(UnknownDownsamplingError, match=r"trunk\.stage1\.0 \(Pooling\)"):
        surgery.find_downsampling(trace, prefix)
