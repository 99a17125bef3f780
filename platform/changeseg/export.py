"""ONNX export of change models, with a parity check against PyTorch in onnxruntime.

The graph has two inputs ``t0`` and ``t1`` (float32 ``(N, 3, H, W)`` in [0, 1]) and one
output ``logits`` (``(N, num_classes, H, W)``); batch, height and width are dynamic.
Normalisation is part of the model, so the graph needs no pre-processing step.

It uses the TorchScript-based exporter (``dynamo=False``): it needs nothing beyond
``onnx`` and matches PyTorch to float rounding at sizes other than the sample's. The
``torch.export``-based exporter needs ``onnxscript`` as well, and on these models its
graphs did not match PyTorch's outputs (differences around 1e-1), so it is not used.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from changeseg.models.contract import input_channels
from changeseg.models.weights import unwrap

__all__ = ["DEFAULT_OPSET", "INPUT_NAMES", "OUTPUT_NAME", "check_onnx_parity", "export_onnx"]

DEFAULT_OPSET = 17
INPUT_NAMES = ("t0", "t1")
OUTPUT_NAME = "logits"
_DYNAMIC = {0: "batch", 2: "height", 3: "width"}


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    height: int = 256,
    width: int = 256,
) -> Path:
    """Write ``model`` (in eval mode) as ONNX to ``path``; ``height`` x ``width`` is only the tracing sample."""
    if height < 32 or width < 32:
        raise ValueError(f"sample size must be at least 32x32, got {height}x{width}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = unwrap(model)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    channels = input_channels(model)  # multi-band models take C-channel images
    sample = torch.rand(1, channels, height, width, generator=torch.Generator().manual_seed(0)).to(device)
    try:
        with warnings.catch_warnings():
            # Shape checks in forward() are traced as constants (TracerWarning) and the
            # exporter announces its own deprecation; neither changes the graph's results.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (sample, sample.clone()),
                str(path),
                input_names=list(INPUT_NAMES),
                output_names=[OUTPUT_NAME],
                dynamic_axes={name: dict(_DYNAMIC) for name in (*INPUT_NAMES, OUTPUT_NAME)},
                opset_version=opset,
                dynamo=False,
            )
    finally:
        model.train(was_training)
    return path


def check_onnx_parity(
    model: nn.Module,
    path: str | Path,
    *,
    batch: int = 2,
    height: int = 96,
    width: int = 80,
    seed: int = 0,
) -> float:
    """Largest absolute difference between PyTorch and onnxruntime logits on one random pair."""
    import onnxruntime as ort  # lazy: an optional extra (changeseg[export]), only for this check

    model = unwrap(model)
    g = torch.Generator().manual_seed(seed)
    channels = input_channels(model)
    t0 = torch.rand(batch, channels, height, width, generator=g)
    t1 = torch.rand(batch, channels, height, width, generator=g)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with torch.inference_mode():
            expected = model(t0.to(device), t1.to(device)).float().cpu().numpy()
    finally:
        model.train(was_training)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run([OUTPUT_NAME], {"t0": t0.numpy(), "t1": t1.numpy()})
    if got.shape != expected.shape:
        raise AssertionError(f"ONNX output shape {got.shape} differs from PyTorch's {expected.shape}")
    return float(np.abs(got - expected).max())
