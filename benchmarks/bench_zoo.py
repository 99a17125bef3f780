"""Cost of every backbone and head: parameters, MACs, inference images/s.

    .venv/bin/python benchmarks/bench_zoo.py [--sizes 256 512] [--seconds 3] [--device cpu|cuda] [--amp]

For each C-3PO configuration (MTF ``iade``, MSF over 4 scales at 512 channels) the
table gives parameters, MACs per pair, images/s (fp32, ``torch.inference_mode``,
channels_last when it is faster) and the ratio of its MACs and time to the plain
segmentation model it is built from (the same backbone and head on one image:
torchvision's own model where one exists), measured in the same run.
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import torch
import torchvision
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from changeseg.models import create_backbone, create_head, create_model

# (label, create_model kwargs)
CONFIGS = [
    ("resnet18 fcn", {"backbone": "resnet18", "head": "fcn"}),
    ("resnet18 deeplabv3", {"backbone": "resnet18", "head": "deeplabv3"}),
    ("resnet50 fcn", {"backbone": "resnet50", "head": "fcn"}),
    (
        "resnet50 deeplabv3 (from deeplabv3_resnet50)",
        {"backbone": "resnet50", "head": "deeplabv3", "head_channels": 2048},
    ),
    ("vgg16_bn deeplabv3", {"backbone": "vgg16_bn", "head": "deeplabv3"}),
    ("mobilenet_v2 fcn", {"backbone": "mobilenet_v2", "head": "fcn"}),
    (
        "mobilenet_v3_large deeplabv3 (from deeplabv3_mobilenet_v3_large)",
        {"backbone": "mobilenet_v3_large", "head": "deeplabv3", "head_channels": 960},
    ),
    ("swin_t fcn", {"backbone": "swin_t", "head": "fcn"}),
    ("efficientnet_lite0 fcn", {"backbone": "efficientnet_lite0", "head": "fcn"}),
    ("timm:convnext_tiny fcn", {"backbone": "timm:convnext_tiny", "head": "fcn"}),
    ("FC-Siam-diff (baseline)", {"name": "fc_siam_diff"}),
]


class PlainSegmentation(nn.Module):
    """Backbone + head on one image at the backbone's last scale: what C-3PO starts from."""

    def __init__(self, *, backbone: str, head: str) -> None:
        super().__init__()
        self.backbone = create_backbone(name=backbone)
        self.head = create_head(name=head, in_channels=self.backbone.channels[-1], num_classes=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.head(self.backbone(x)[-1]), size=x.shape[-2:], mode="bilinear", align_corners=False)


def plain_model(kwargs: dict) -> nn.Module | None:
    if "backbone" not in kwargs:
        return None
    tv = {
        ("resnet50", "fcn"): torchvision.models.segmentation.fcn_resnet50,
        ("resnet50", "deeplabv3"): torchvision.models.segmentation.deeplabv3_resnet50,
        ("mobilenet_v3_large", "deeplabv3"): torchvision.models.segmentation.deeplabv3_mobilenet_v3_large,
    }.get((kwargs["backbone"], kwargs["head"]))
    if tv is not None:
        return tv(weights=None, weights_backbone=None, num_classes=2, aux_loss=False)
    return PlainSegmentation(backbone=kwargs["backbone"], head=kwargs["head"])


def macs(model: nn.Module, inputs: tuple) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(*inputs)
    return counter.get_total_flops() / 2


def throughput(model: nn.Module, inputs: tuple, *, seconds: float, amp: bool) -> float:
    """Images/s over at least one call and about ``seconds`` of calls, after one warm-up."""
    ctx = (
        torch.autocast(inputs[0].device.type, dtype=torch.float16 if inputs[0].is_cuda else torch.bfloat16)
        if amp
        else nullcontext()
    )
    sync = torch.cuda.synchronize if inputs[0].is_cuda else (lambda: None)
    with torch.inference_mode(), ctx:
        model(*inputs)
        sync()
        calls, start = 0, time.perf_counter()
        while calls == 0 or time.perf_counter() - start < seconds:
            model(*inputs)
            calls += 1
        sync()
    return inputs[0].shape[0] * calls / (time.perf_counter() - start)


def best_layout(model: nn.Module, inputs: tuple, *, seconds: float, amp: bool) -> tuple[float, str]:
    contiguous = throughput(model, inputs, seconds=seconds, amp=amp)
    model = model.to(memory_format=torch.channels_last)
    cl_inputs = tuple(x.contiguous(memory_format=torch.channels_last) for x in inputs)
    channels_last = throughput(model, cl_inputs, seconds=seconds, amp=amp)
    model.to(memory_format=torch.contiguous_format)
    return (channels_last, "CL") if channels_last > contiguous else (contiguous, "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="also measure autocast (fp16 on CUDA, bf16 on CPU)")
    parser.add_argument("--only", nargs="*", help="substrings of the labels to run")
    args = parser.parse_args()
    device = torch.device(args.device)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {card}, batch {args.batch}")
    cols = "".join(f" | {s}px GMACs | {s}px img/s | {s}px MAC ratio | {s}px time ratio" for s in args.sizes)
    if args.amp:
        cols += "".join(f" | {s}px AMP img/s" for s in args.sizes)
    print(f"| model | params (M){cols} |")
    print("|---|---" + "|---" * (len(args.sizes) * (4 + int(args.amp))) + "|")
    for label, kwargs in CONFIGS:
        if args.only and not any(o in label for o in args.only):
            continue
        model = create_model(**kwargs).eval().to(device)
        plain = plain_model(kwargs)
        plain = plain.eval().to(device) if plain is not None else None
        params = sum(p.numel() for p in model.parameters()) / 1e6
        cells, amp_cells = [], []
        for size in args.sizes:
            pair = (
                torch.rand(args.batch, 3, size, size, device=device),
                torch.rand(args.batch, 3, size, size, device=device),
            )
            m = macs(model, pair) / args.batch / 1e9
            rate, layout = best_layout(model, pair, seconds=args.seconds, amp=False)
            if plain is not None:
                pm = macs(plain, pair[:1]) / args.batch / 1e9
                prate, _ = best_layout(plain, pair[:1], seconds=args.seconds, amp=False)
                cells += [
                    f"{m:.1f}",
                    f"{rate:.2f}{' ' + layout if layout else ''}",
                    f"{m / pm:.2f}",
                    f"{prate / rate:.2f}",
                ]
            else:
                cells += [f"{m:.1f}", f"{rate:.2f}{' ' + layout if layout else ''}", "-", "-"]
            if args.amp:
                amp_cells.append(f"{throughput(model, pair, seconds=args.seconds, amp=True):.2f}")
        print(f"| {label} | {params:.1f} | " + " | ".join(cells + amp_cells) + " |", flush=True)


if __name__ == "__main__":
    main()
