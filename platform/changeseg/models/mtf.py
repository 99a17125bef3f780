"""MTF: merges the t0 and t1 features of one scale into one change-aware map.

Four branches, each one 3x3 conv (no bias) on a simple pairwise feature:

- info      I = conv_i(f0) + conv_i(f1)           (what is there at all)
- appear    A = conv_r(ReLU(f1 - f0))             (what is new in t1)
- disappear D = conv_r(ReLU(f0 - f1))             (what is gone from t1)
- exchange  E = conv_e(|f0 - f1|)                 (what changed, either way)

A mode string names the branches used: letters ``i``, ``a``, ``d``, ``e`` in
that order; ``i2`` gives f0 and f1 separate info convs, ``ad2`` gives appear
and disappear separate convs (by default they share ``conv_r``, so appearing
and disappearing are detected by the same filters, mirrored).

Combination: one branch is used alone; two branches (info plus one more) are
``I + 2 * branch``; three or more are a plain sum. ReLU is applied last.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["MTF", "MTF_MODES"]

_MODE_RE = re.compile(r"^(?:(?P<i>i)(?P<i2>2)?)?(?P<a>a)?(?:(?P<d>d)(?P<d2>2)?)?(?P<e>e)?$")


@dataclass(frozen=True)
class _ModeSpec:
    info: bool
    info_separate: bool
    appear: bool
    disappear: bool
    ad_separate: bool
    exchange: bool

    @property
    def branches(self) -> tuple[str, ...]:
        flags = (
            ("info", self.info),
            ("appear", self.appear),
            ("disappear", self.disappear),
            ("exchange", self.exchange),
        )
        return tuple(name for name, used in flags if used)


def _parse_mode(mode: str) -> _ModeSpec | None:
    """The mode's branches, or None if the string is not a valid mode."""
    match = _MODE_RE.match(mode) if isinstance(mode, str) else None
    if match is None:
        return None
    g = match.groupdict()
    spec = _ModeSpec(
        info=g["i"] is not None,
        info_separate=g["i2"] is not None,
        appear=g["a"] is not None,
        disappear=g["d"] is not None,
        ad_separate=g["d2"] is not None,
        exchange=g["e"] is not None,
    )
    n = len(spec.branches)
    if n == 0:
        return None
    # "ad2" separates appear from disappear: meaningless unless both are used.
    if spec.ad_separate and not spec.appear:
        return None
    # Combining rules are only defined around the info branch.
    if n >= 2 and not spec.info:
        return None
    return spec


def _all_modes() -> tuple[str, ...]:
    candidates = ("".join(parts) for parts in itertools.product(("", "i", "i2"), ("", "a"), ("", "d", "d2"), ("", "e")))
    valid = [m for m in candidates if _parse_mode(m) is not None]
    # Fewest branches first, shared-conv variants before separate ones.
    return tuple(sorted(valid, key=lambda m: (len(_parse_mode(m).branches), m.count("2"), m)))  # type: ignore[union-attr]


MTF_MODES: tuple[str, ...] = _all_modes()
"""Every accepted mode (includes the authors' i, a, d, e, ia, id, ie, iad, iae,
ide, iade, i2ade, iad2e, i2ad2e, i2d)."""


def _conv(channels: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, 3, padding=1, bias=False)


class MTF(nn.Module):
    """Merge temporal features of one scale according to ``mode``.

    Args:
        channels: channels of f0, f1 and of the output.
        mode: one of :data:`MTF_MODES`.
    """

    def __init__(self, channels: int, mode: str) -> None:
        super().__init__()
        spec = _parse_mode(mode)
        if spec is None:
            raise ValueError(f"invalid MTF mode {mode!r}; valid modes: {', '.join(MTF_MODES)}")
        self.mode = mode
        self.channels = channels
        self._spec = spec
        self.branch_names = spec.branches
        if spec.info:
            if spec.info_separate:
                self.conv_i0, self.conv_i1 = _conv(channels), _conv(channels)
            else:
                self.conv_i = _conv(channels)
        if spec.appear or spec.disappear:
            if spec.ad_separate:
                self.conv_a, self.conv_d = _conv(channels), _conv(channels)
            else:
                self.conv_r = _conv(channels)
        if spec.exchange:
            self.conv_e = _conv(channels)

    def forward(
        self, f0: Tensor, f1: Tensor, *, return_branches: bool = False
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """Fused map; with ``return_branches`` also each branch before combination."""
        if f0.shape != f1.shape:
            raise ValueError(f"MTF inputs differ in shape: {tuple(f0.shape)} vs {tuple(f1.shape)}")
        spec = self._spec
        branches: dict[str, Tensor] = {}
        if spec.info:
            if spec.info_separate:
                branches["info"] = self.conv_i0(f0) + self.conv_i1(f1)
            else:
                # No bias, so conv(f0) + conv(f1) == conv(f0 + f1): one conv, not two.
                branches["info"] = self.conv_i(f0 + f1)
        if spec.appear:
            conv_a = self.conv_a if spec.ad_separate else self.conv_r
            branches["appear"] = conv_a(F.relu(f1 - f0))
        if spec.disappear:
            conv_d = self.conv_d if spec.ad_separate else self.conv_r
            branches["disappear"] = conv_d(F.relu(f0 - f1))
        if spec.exchange:
            branches["exchange"] = self.conv_e(torch.abs(f0 - f1))

        maps = list(branches.values())
        if len(maps) == 2:
            # Info is first by construction (the parser requires it); doubling
            # the change branch is the published two-branch rule.
            fused = maps[0] + 2 * maps[1]
        else:
            fused = maps[0]
            for m in maps[1:]:
                fused = fused + m
        fused = F.relu(fused)
        if return_branches:
            return fused, branches
        return fused

    def extra_repr(self) -> str:
        return f"channels={self.channels}, mode={self.mode!r}"
