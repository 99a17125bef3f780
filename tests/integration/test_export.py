"""ONNX export: dynamic batch/height/width, parity with PyTorch in onnxruntime, the CLI."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from changeseg.cli import main as cli_main  # noqa: E402
from changeseg.export import check_onnx_parity, export_onnx  # noqa: E402
from changeseg.models import create_model  # noqa: E402
from changeseg.models.weights import save_checkpoint  # noqa: E402

torch.set_num_threads(2)

# Export traces a 1 x 64 x 48 sample; the graph is then run at other batches and sizes.
EXPORT_HW = (64, 48)
RUN_SHAPES = [(3, 45, 77), (2, 96, 33)]
MODELS = {
    "c3po_fcn": dict(backbone="resnet18", msf_width=32, msf_scales=4, head="fcn"),
    "c3po_deeplabv3": dict(backbone="resnet18", msf_width=32, msf_scales=4, head="deeplabv3"),
    # The in-model resampling must follow the runtime size, not the traced one.
    "c3po_input_scale": dict(backbone="resnet18", msf_width=32, msf_scales=2, input_scale=1.5),
    "fc_siam_conc": dict(name="fc_siam_conc"),
}


def _randomise_batchnorm(model: torch.nn.Module) -> None:
    """Non-trivial running statistics, so the exported BatchNorm is really exercised."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


@pytest.mark.parametrize("key", sorted(MODELS))
def test_onnx_matches_torch_at_other_sizes_and_batches(key, tmp_path):
    torch.manual_seed(0)
    model = create_model(**MODELS[key])
    _randomise_batchnorm(model)
    model.train()  # export must switch to eval itself and restore the mode afterwards
    path = export_onnx(model, tmp_path / "m.onnx", height=EXPORT_HW[0], width=EXPORT_HW[1])
    assert model.training
    model.eval()

    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    assert [i.name for i in graph.graph.input] == ["t0", "t1"]
    assert [o.name for o in graph.graph.output] == ["logits"]
    for value in (*graph.graph.input, *graph.graph.output):
        dims = value.type.tensor_type.shape.dim
        assert [dims[i].dim_param for i in (0, 2, 3)] == ["batch", "height", "width"], value.name

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(1)
    for n, h, w in RUN_SHAPES:
        t0, t1 = torch.rand(n, 3, h, w, generator=g), torch.rand(n, 3, h, w, generator=g)
        with torch.no_grad():
            expected = model(t0, t1).numpy()
        (got,) = session.run(["logits"], {"t0": t0.numpy(), "t1": t1.numpy()})
        assert got.shape == expected.shape == (n, 2, h, w)
        diff = float(np.abs(got - expected).max())
        print(f"{key} {n}x{h}x{w}: max abs diff {diff:.2e}")
        assert diff < 1e-4


def test_parity_check_reports_a_wrong_graph(tmp_path):
    """The check compares against the given model: another model's graph must show up."""
    torch.manual_seed(0)
    a = create_model(name="fc_ef")
    b = create_model(name="fc_ef")
    path = export_onnx(a, tmp_path / "a.onnx", height=32, width=32)
    assert check_onnx_parity(a, path, batch=1, height=40, width=36) < 1e-4
    assert check_onnx_parity(b, path, batch=1, height=40, width=36) > 1e-3


def test_export_rejects_tiny_sample(tmp_path):
    with pytest.raises(ValueError, match="at least 32x32"):
        export_onnx(create_model(name="fc_ef"), tmp_path / "m.onnx", height=16, width=64)


def test_cli_exports_checkpoint_folder(tmp_path, capsys):
    torch.manual_seed(0)
    model = create_model(backbone="resnet18", msf_width=32, msf_scales=2, head="fcn", mtf="iade")
    _randomise_batchnorm(model)
    ckpt = save_checkpoint(tmp_path / "ckpt", model.eval())
    out = tmp_path / "out" / "model.onnx"

    rc = cli_main(["export", "--model", str(ckpt), "--output", str(out), "--height", "64", "--width", "64"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    match = re.search(r"max abs diff ([0-9.e+-]+)", printed)
    assert match and float(match.group(1)) < 1e-4

    # The file works on its own, with the checkpoint's weights.
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    t0, t1 = torch.rand(2, 3, 50, 70), torch.rand(2, 3, 50, 70)
    with torch.no_grad():
        expected = model(t0, t1).numpy()
    (got,) = session.run(None, {"t0": t0.numpy(), "t1": t1.numpy()})
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_cli_missing_model_is_an_error(tmp_path, capsys):
    rc = cli_main(["export", "--model", str(tmp_path / "nope"), "--output", str(tmp_path / "m.onnx")])
    assert rc == 1
    assert "model checkpoint not found" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()
