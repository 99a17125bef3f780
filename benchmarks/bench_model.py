"""Forward+backward images/s of C-3PO ResNet-18 on this CPU.

    .venv/bin/python benchmarks/bench_model.py [--size 256] [--batch 4] [--steps 5]

Prints images/s for the paper's configuration (iade, MSF-4 at 512 channels) with the
FCN and DeepLabv3 heads, the narrow demo configuration, and inference alone, with the
ratio of each to the first row (measured in the same run).
"""

from __future__ import annotations

import argparse
import time

import torch

from changeseg.models import create_model


def fwd_bwd(model, batch: int, size: int, steps: int) -> float:
    t0, t1 = torch.rand(batch, 3, size, size), torch.rand(batch, 3, size, size)
    target = torch.randint(0, 2, (batch, size, size))
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    model.train()
    times = []
    for _ in range(steps + 1):  # the first step warms up allocators
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(t0, t1), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return batch / (sum(times[1:]) / steps)


def forward_only(model, batch: int, size: int, steps: int) -> float:
    t0, t1 = torch.rand(batch, 3, size, size), torch.rand(batch, 3, size, size)
    model.eval()
    with torch.inference_mode():
        model(t0, t1)
        start = time.perf_counter()
        for _ in range(steps):
            model(t0, t1)
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, input {args.size}x{args.size}, batch {args.batch}"
    )
    rows = [
        ("R18 iade MSF-4x512 FCN   fwd+bwd", dict(head="fcn"), fwd_bwd),
        ("R18 iade MSF-4x512 DLv3  fwd+bwd", dict(head="deeplabv3"), fwd_bwd),
        ("R18 iade MSF-4x128 FCN   fwd+bwd (demo)", dict(head="fcn", msf_width=128), fwd_bwd),
        ("R18 iade MSF-4x512 FCN   forward", dict(head="fcn"), forward_only),
    ]
    base = None
    for label, kwargs, fn in rows:
        torch.manual_seed(0)
        model = create_model(backbone="resnet18", mtf="iade", msf_scales=4, **kwargs)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        rate = fn(model, args.batch, args.size, args.steps)
        base = base or rate
        print(f"{label:42s} {params:6.1f} M params  {rate:7.2f} images/s  ratio {rate / base:5.2f}")


if __name__ == "__main__":
    main()
