"""Small builders shared by tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image

from changeseg.runtime import free_port  # noqa: F401  (the tests' name for it)


def write_pair_folder(root: Path, ids: list[str], *, size=(32, 40), seed: int = 0) -> dict[str, dict]:
    """Random RGB pairs and 0/255 masks in the generic t0/ t1/ mask/ layout."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in ("t0", "t1", "mask"):
        (root / name).mkdir(parents=True, exist_ok=True)
    for pair_id in ids:
        t0 = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        t1 = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        mask = (rng.random(size) < 0.3).astype(np.uint8)
        Image.fromarray(t0).save(root / "t0" / f"{pair_id}.png")
        Image.fromarray(t1).save(root / "t1" / f"{pair_id}.png")
        Image.fromarray(mask * 255).save(root / "mask" / f"{pair_id}.png")
        out[pair_id] = {"t0": t0, "t1": t1, "mask": mask}
    return out


def load_module(path: Path) -> ModuleType:
    """A script that is not part of the package (infra/, benchmarks/) imported by path."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
