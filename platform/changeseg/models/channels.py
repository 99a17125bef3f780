"""Models with more (or fewer) than three input channels.

Satellite scenes carry bands besides red, green and blue (near infrared, red edge, ...).
The backbone's first convolution is rebuilt for ``in_channels``; pretrained RGB filters
still load: each filter's red, green and blue slices go to the channels that hold those
bands (``rgb_channels``), every other channel starts from the mean of the three, and
the whole kernel is scaled by 3 / ``in_channels`` so a pixel with equal values in every
band gives the activation it gave before (the rule timm uses for ``in_chans``).
Normalisation stays inside the model, per channel: ImageNet statistics for R, G, B and
``channel_mean`` / ``channel_std`` (default 0.45 / 0.225, about ImageNet's average) for the rest.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "DEFAULT_EXTRA_MEAN",
    "DEFAULT_EXTRA_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "adapt_first_conv",
    "adapt_rgb_kernel",
    "channel_stats",
    "check_rgb_channels",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_EXTRA_MEAN = 0.45
DEFAULT_EXTRA_STD = 0.225


def check_rgb_channels(rgb_channels: Sequence[int] | None, in_channels: int) -> tuple[int, ...] | None:
    """Three distinct channel positions below ``in_channels``, or None (fewer than three channels)."""
    if in_channels < 3:
        return None
    rgb = tuple(int(c) for c in (rgb_channels if rgb_channels is not None else (0, 1, 2)))
    if len(rgb) != 3 or len(set(rgb)) != 3 or min(rgb) < 0 or max(rgb) >= in_channels:
        raise ValueError(f"rgb_channels must be three distinct channels in 0..{in_channels - 1}, got {list(rgb)}")
    return rgb


def channel_stats(
    in_channels: int,
    *,
    rgb_channels: Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    rgb_mean: Sequence[float] = IMAGENET_MEAN,
    rgb_std: Sequence[float] = IMAGENET_STD,
) -> tuple[list[float], list[float]]:
    """Per-channel mean and std: the given lists, else ``rgb_mean`` / ``rgb_std`` (the
    backbone's weights' statistics, ImageNet's by default) for R, G, B and the defaults elsewhere."""
    rgb = check_rgb_channels(rgb_channels, in_channels)
    out_mean = [DEFAULT_EXTRA_MEAN] * in_channels
    out_std = [DEFAULT_EXTRA_STD] * in_channels
    if rgb is not None:
        for k, c in enumerate(rgb):
            out_mean[c], out_std[c] = float(rgb_mean[k]), float(rgb_std[k])
    for name, given, default in (("channel_mean", mean, out_mean), ("channel_std", std, out_std)):
        if given is not None:
            if len(given) != in_channels:
                raise ValueError(f"{name} has {len(given)} values for {in_channels} input channels")
            default[:] = [float(v) for v in given]
    if min(out_std) <= 0:
        raise ValueError("channel_std values must be positive")
    return out_mean, out_std


def adapt_rgb_kernel(weight: Tensor, in_channels: int, rgb_channels: Sequence[int] | None = None) -> Tensor:
    """A (O, 3, kh, kw) kernel for ``in_channels`` inputs (see the module docstring)."""
    if weight.dim() != 4 or weight.shape[1] != 3:
        raise ValueError(f"expected an RGB kernel (O, 3, kh, kw), got {tuple(weight.shape)}")
    if in_channels == 3 and rgb_channels in (None, (0, 1, 2), [0, 1, 2]):
        return weight
    if in_channels < 3:
        # Fewer bands than RGB: every channel takes the summed filter, shared out.
        return weight.sum(1, keepdim=True).repeat(1, in_channels, 1, 1) / in_channels
    rgb = check_rgb_channels(rgb_channels, in_channels)
    out = weight.mean(1, keepdim=True).repeat(1, in_channels, 1, 1)
    for k, c in enumerate(rgb):
        out[:, c] = weight[:, k]
    return out * (3.0 / in_channels)


def adapt_first_conv(module: nn.Module, in_channels: int, rgb_channels: Sequence[int] | None = None) -> nn.Module:
    """Rebuild the first 3-input convolution of ``module`` for ``in_channels``; its current
    weights are adapted with :func:`adapt_rgb_kernel`. Records ``in_channels`` and
    ``rgb_channels`` on the module so weight loaders adapt RGB kernels the same way."""
    module.in_channels = in_channels
    module.rgb_channels = check_rgb_channels(rgb_channels, in_channels)
    if in_channels == 3:
        return module
    for name, child in module.named_modules():
        if isinstance(child, nn.Conv2d) and child.in_channels == 3 and child.groups == 1:
            new = nn.Conv2d(
                in_channels,
                child.out_channels,
                child.kernel_size,
                stride=child.stride,
                padding=child.padding,
                dilation=child.dilation,
                bias=child.bias is not None,
                padding_mode=child.padding_mode,
            )
            with torch.no_grad():
                new.weight.copy_(adapt_rgb_kernel(child.weight, in_channels, module.rgb_channels))
                if child.bias is not None:
                    new.bias.copy_(child.bias)
            parent_name, _, attr = name.rpartition(".")
            setattr(module.get_submodule(parent_name) if parent_name else module, attr, new)
            return module
    raise ValueError(f"{type(module).__name__} has no 3-channel input convolution to adapt")


def adapt_state_for(
    module: nn.Module, state: dict[str, Tensor], *, rgb_channels: Sequence[int] | None = None
) -> dict[str, Tensor]:
    """``state`` with RGB kernels (O, 3, kh, kw) adapted where ``module`` has more or fewer
    input channels; ``rgb_channels``: the input positions of R, G, B (default 0, 1, 2)."""
    own = module.state_dict()
    rgb = rgb_channels
    out = dict(state)
    for key, value in state.items():
        mine = own.get(key)
        if (
            mine is not None
            and value.dim() == 4
            and mine.dim() == 4
            and value.shape[1] == 3
            and mine.shape[1] != 3
            and value.shape[0] == mine.shape[0]
            and value.shape[2:] == mine.shape[2:]
        ):
            out[key] = adapt_rgb_kernel(value, int(mine.shape[1]), rgb)
    return out
