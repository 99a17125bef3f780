"""Tests for the FC-EF / FC-Siam-conc / FC-Siam-diff baselines."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from changeseg.models.baselines import BASELINES, FCEF, FCSiamConc, FCSiamDiff
from changeseg.models.weights import META_FILE, WEIGHTS_FILE, load_checkpoint, save_checkpoint

torch.set_num_threads(2)


def _pair(n: int = 2, h: int = 37, w: int = 53, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, h, w, generator=g), torch.rand(n, 3, h, w, generator=g)


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(BASELINES))
@pytest.mark.parametrize(("h", "w"), [(37, 53), (16, 16), (1, 7), (64, 33)])
def test_logits_match_input_size(name, h, w):
    model = BASELINES[name](num_classes=3).eval()
    t0, t1 = _pair(h=h, w=w)
    with torch.no_grad():
        assert model(t0, t1).shape == (2, 3, h, w)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_backward_reaches_every_parameter(name):
    model = BASELINES[name]().train()
    t0, t1 = _pair(h=33, w=31)
    model(t0, t1).square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


def test_parameter_counts_match_paper():
    """Paper: FC-EF 1.35M, FC-Siam-conc 1.55M, FC-Siam-diff 1.35M."""
    ef, conc, diff = _n_params(FCEF()), _n_params(FCSiamConc()), _n_params(FCSiamDiff())
    assert (ef, conc, diff) == (1_350_578, 1_545_986, 1_350_146)
    # The siamese encoder reads 3 channels, not 6: one first conv of 3*16*3*3 weights fewer.
    assert ef - diff == 3 * 16 * 9
    # Siam-conc's extra skip per level widens the first conv of each decoder level.
    assert conc - diff == sum(c * c * 9 for c in (16, 32, 64, 128))


@pytest.mark.parametrize("cls", [FCSiamConc, FCSiamDiff])
def test_siamese_encoder_is_one_module(cls):
    model = cls()
    encoders = [m for m in model.modules() if type(m).__name__ == "Encoder"]
    assert len(encoders) == 1
    assert encoders[0].levels[0][0].in_channels == 3


def _batch_stats_no_dropout(model: nn.Module) -> nn.Module:
    """Deterministic, but BatchNorm renormalises each layer: at initialisation with
    running statistics the deep path's share of the logits is ~1e-8 of the skips'."""
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.train()
    return model


def test_siam_diff_skips_symmetric_bottleneck_from_t1():
    """|f0 - f1| does not depend on the order of the dates; the bottleneck is t1's alone."""
    model = _batch_stats_no_dropout(FCSiamDiff())
    t0, t1 = _pair()
    other, _ = _pair(seed=5)
    with torch.no_grad():
        b01, s01 = model.features(t0, t1)
        b10, s10 = model.features(t1, t0)
        b_other, _ = model.features(other, t1)
        for a, b in zip(s01, s10):
            torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
        torch.testing.assert_close(b01, b_other, rtol=0, atol=0)
        assert not torch.allclose(b01, b10)
        # Hence the output is not symmetric in (t0, t1) ...
        assert (model(t0, t1) - model(t1, t0)).abs().max() > 1e-3
        # ... but it equals decoding t1's bottleneck with the swapped pair's skips.
        torch.testing.assert_close(model(t0, t1), model.decoder(b01, s10))
        # Identical dates give zero skips at every level.
        _, same = model.features(t1, t1)
        assert all(not s[0].any() for s in same)


def test_siam_conc_swapping_dates_swaps_skip_halves():
    model = FCSiamConc().eval()
    t0, t1 = _pair()
    with torch.no_grad():
        _, s01 = model.features(t0, t1)
        _, s10 = model.features(t1, t0)
    for (a0, a1), (b0, b1) in zip(s01, s10):
        torch.testing.assert_close(a0, b1, rtol=0, atol=0)
        torch.testing.assert_close(a1, b0, rtol=0, atol=0)


def test_early_fusion_sees_both_dates_at_the_first_conv():
    model = FCEF().eval()
    first = model.encoder.levels[0][0]
    assert first.in_channels == 6
    t0, t1 = _pair()
    with torch.no_grad():
        base = model(t0, t1)
        first.weight[:, 3:].zero_()  # cut t1 out of the network
        assert not torch.allclose(base, model(t0, t1))
        assert torch.equal(model(t0, t1), model(t0, torch.rand_like(t1)))


def test_normalisation_inside_is_imagenet_and_not_saved():
    model = FCSiamDiff()
    assert "mean" not in model.state_dict() and "std" not in model.state_dict()
    torch.testing.assert_close(model.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    torch.testing.assert_close(model.std.flatten(), torch.tensor([0.229, 0.224, 0.225]))


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_config_is_json_safe_and_rebuilds(name):
    model = BASELINES[name](num_classes=4)
    assert json.loads(json.dumps(model.config)) == {"name": name, "num_classes": 4}


@pytest.mark.parametrize("bad", [1, 2.0, True, "2"])
def test_num_classes_validated(bad):
    with pytest.raises(ValueError, match="num_classes must be an int >= 2"):
        FCEF(num_classes=bad)


def test_keyword_only_arguments():
    with pytest.raises(TypeError):
        FCEF(3)  # type: ignore[misc]


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_checkpoint_files_round_trip(name, tmp_path):
    """save_checkpoint writes config + safetensors from which the same model is rebuilt."""
    model = BASELINES[name](num_classes=3).eval()
    with torch.no_grad():  # non-default BatchNorm statistics must survive too
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    save_checkpoint(tmp_path, model)
    meta = json.loads((tmp_path / META_FILE).read_text())
    config = dict(meta["model"])
    rebuilt = BASELINES[config.pop("name")](**config).eval()
    rebuilt.load_state_dict(load_file(str(tmp_path / WEIGHTS_FILE)))
    t0, t1 = _pair()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(t0, t1), model(t0, t1), rtol=0, atol=0)


def test_load_checkpoint_rebuilds_registered_baseline(tmp_path):
    from changeseg.models import list_models

    assert {"fc_ef", "fc_siam_conc", "fc_siam_diff"} <= set(list_models())
    model = FCSiamDiff().eval()
    save_checkpoint(tmp_path, model)
    loaded, _ = load_checkpoint(tmp_path)
    assert isinstance(loaded, FCSiamDiff) and loaded.config == model.config
    t0, t1 = _pair()
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(t0, t1), model(t0, t1), rtol=0, atol=0)
