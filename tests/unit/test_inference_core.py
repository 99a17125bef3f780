"""The inference core, image decoding, pair-id file names and checkpoint/weights loading (no Ray)."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from changeseg.data.decode import ImageTooLarge, UnsupportedImage, decode_image, decode_mask
from changeseg.inference.naming import UnsafePairId, check_pair_id, pair_file_name
from changeseg.inference.predictor import Predictor
from changeseg.models import create_model
from changeseg.models.weights import META_FILE, load_checkpoint, save_checkpoint


class LocalModel(nn.Module):
    """Two 3x3 convs (reach: 2 pixels); records the input sizes it was called with."""

    def __init__(self, fail_width: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
        self.num_classes, self.calls, self.fail_width = 3, [], fail_width

    def forward(self, t0, t1):
        self.calls.append(tuple(t0.shape))
        if t0.shape[-1] == self.fail_width:
            raise RuntimeError("out of memory (simulated)")
        return self.net(torch.cat([t0, t1], 1))


def _pair(shape, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, shape, dtype=np.uint8), rng.integers(0, 256, shape, dtype=np.uint8)


def _encoded(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


# --- Predictor -----------------------------------------------------------------------


def test_tiled_windows_match_the_whole_image_and_stay_bounded():
    t0, t1 = _pair((2, 150, 110, 3))
    whole = Predictor(LocalModel()).predict_proba(t0, t1)
    model = LocalModel()
    tiled = Predictor(model, tile_size=32, tile_overlap=8, batch_size=4).predict_proba(t0, t1)
    assert tiled.shape == (2, 3, 150, 110) and tiled.dtype == np.float32
    np.testing.assert_allclose(tiled, whole, atol=1e-6)
    # No forward pass saw more than batch_size windows of tile x tile pixels.
    assert max(c[0] for c in model.calls) <= 4 and max(max(c[2:]) for c in model.calls) <= 32


def test_predict_pairs_groups_sizes_keeps_order_and_respects_the_pixel_budget():
    model = LocalModel()
    predictor = Predictor(model, batch_size=8, max_batch_pixels=2 * 20 * 30)
    shapes = [(20, 30, 3), (25, 25, 3), (20, 30, 3), (20, 30, 3)]
    pairs = [_pair(s, seed=i) for i, s in enumerate(shapes)]
    results = predictor.predict_pairs([p[0] for p in pairs], [p[1] for p in pairs], change=True)
    for (a, b), res in zip(pairs, results):
        proba = predictor.predict_proba(a, b)[0]
        np.testing.assert_array_equal(res.mask, proba.argmax(0))
        np.testing.assert_allclose(res.change / 65535, 1 - proba[0], atol=1e-4)
    assert max(c[0] for c in model.calls) <= 2  # the budget holds two 20x30 pairs per pass
    assert [r.batch_size for r in results] == [2, 1, 2, 1]


def test_a_failing_group_fails_only_its_own_pairs():
    predictor = Predictor(LocalModel(fail_width=37))
    a, b = _pair((20, 30, 3))
    c, d = _pair((20, 37, 3))
    results = predictor.predict_pairs([a, c, a], [b, d, b])
    assert isinstance(results[1], RuntimeError) and "out of memory" in str(results[1])
    assert results[0].mask.shape == (20, 30) and results[2].mask.shape == (20, 30)


def test_precision_channels_last_and_flip_tta():
    model = create_model(backbone="resnet18", msf_width=16, msf_scales=1, head="fcn").eval()
    t0, t1 = _pair((40, 48, 3))
    fp32 = Predictor(model, device="cpu", precision="auto").predict_proba(t0, t1)
    assert fp32.dtype == np.float32 and fp32.shape == (1, 2, 40, 48)
    bf16 = Predictor(model, device="cpu", precision="bf16", channels_last=True).predict_proba(t0, t1)
    assert bf16.dtype == np.float32 and np.allclose(bf16.sum(1), 1, atol=1e-5)  # softmax in fp32
    assert np.abs(bf16 - fp32).max() < 0.1
    with pytest.raises(ValueError, match="fp16 needs a CUDA"):
        Predictor(model, device="cpu", precision="fp16")
    # A per-pixel model is flip-equivariant: TTA averages three identical answers.
    pointwise = nn.Conv2d(6, 2, 1)
    local = type("Pointwise", (nn.Module,), {"forward": lambda self, a, b: pointwise(torch.cat([a, b], 1))})()
    local.add_module("conv", pointwise)
    np.testing.assert_allclose(
        Predictor(local, tta=True).predict_proba(t0, t1), Predictor(local).predict_proba(t0, t1), atol=1e-6
    )


def test_predictor_loads_bytes_and_folders_alike(tmp_path):
    model = create_model(backbone="resnet18", msf_width=16, msf_scales=1, head="fcn").eval()
    folder = save_checkpoint(tmp_path / "ckpt", model)
    from_bytes = Predictor.from_bytes((folder / META_FILE).read_text(), (folder / "model.safetensors").read_bytes())
    t0, t1 = _pair((32, 32, 3))
    np.testing.assert_array_equal(from_bytes.predict_proba(t0, t1), Predictor.from_dir(folder).predict_proba(t0, t1))


# --- checkpoints and weights -----------------------------------------------------------


@pytest.mark.parametrize("key", ["weights", "weights_file", "storage_options"])
def test_checkpoint_model_json_accepts_architecture_keys_only(tmp_path, key):
    folder = save_checkpoint(tmp_path / "ckpt", create_model(name="fc_siam_diff"))
    meta = json.loads((folder / META_FILE).read_text())
    meta["model"][key] = "/etc/passwd"
    (folder / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=f"architecture keys only, not {key}"):
        load_checkpoint(folder)


def test_cached_torchvision_weights_are_hash_checked_and_tensor_only(tmp_path, monkeypatch):
    from changeseg.models.pretrained import _torchvision_state, read_verified_state_dict

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "resnet18-f37072fd.pth").write_bytes(b"tampered")
    with pytest.raises(RuntimeError, match="does not match its hash prefix"):
        _torchvision_state("resnet18", None)
    # A file whose hash matches but which pickles an object, not tensors, is refused.
    buf = io.BytesIO()
    torch.save({"weight": torch.zeros(2), "extra": Predictor}, buf)
    data = buf.getvalue()
    evil = tmp_path / f"evil-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    evil.write_bytes(data)
    with pytest.raises(Exception, match="[Ww]eights only|weights_only|Unsupported global"):
        read_verified_state_dict(evil)


# --- decoding --------------------------------------------------------------------------


def test_sixteen_bit_palette_alpha_cmyk_and_grey_decode_faithfully():
    ramp = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    for fmt in ("PNG", "TIFF"):
        rgb = decode_image(_encoded(Image.fromarray(ramp), fmt))
        assert rgb.shape == (256, 256, 3) and (rgb == 255).mean() < 0.01 and abs(rgb.mean() - 127.5) < 1
    palette = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), mode="P")
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    assert decode_image(_encoded(palette, "PNG"))[0, 0].tolist() == [255, 0, 0]
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 1], rgba[..., 3] = 200, 255
    rgba[0, 0, 3] = 0  # one transparent pixel: black, like no data
    out = decode_image(_encoded(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert out[1, 1].tolist() == [0, 200, 0] and out[0, 0].tolist() == [0, 0, 0]
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # red
    red = decode_image(_encoded(cmyk, "JPEG", quality=95))[4, 4]
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
    grey = decode_image(_encoded(Image.fromarray(np.full((3, 5), 77, np.uint8)), "PNG"))
    assert grey.shape == (3, 5, 3) and (grey == 77).all()
    with pytest.raises(UnsupportedImage, match="float"):
        decode_image(_encoded(Image.fromarray(np.zeros((4, 4), np.float32)), "TIFF"))
    # 16-bit 0/1 and 0/65535 masks keep their meaning.
    assert decode_mask(_encoded(Image.fromarray(np.eye(4, dtype=np.uint16)), "PNG")).sum() == 4
    assert decode_mask(_encoded(Image.fromarray(np.eye(4, dtype=np.uint16) * 65535), "PNG")).sum() == 4


def test_exif_orientation_format_allow_list_and_header_pixel_cap():
    img = Image.fromarray(np.zeros((10, 20, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    assert decode_image(_encoded(img, "JPEG", exif=exif.tobytes())).shape == (20, 10, 3)
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\nshowpage\n"
    with pytest.raises(UnidentifiedImageError):
        decode_image(eps)
    with pytest.raises(ImageTooLarge, match="2000x2000"):
        decode_image(_encoded(Image.new("RGB", (2000, 2000)), "PNG"), max_pixels=1_000_000)


# --- pair ids --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", ["../../escaped", "/abs/path", "a//b", "a/./b", "a\\b", "x\x00y", "", "..", "a/../../b"]
)
def test_unsafe_pair_ids_are_refused(bad):
    with pytest.raises(UnsafePairId):
        check_pair_id(bad)


def test_pair_file_names():
    assert pair_file_name("site/001", ".png") == "site/001.png"
    assert pair_file_name("site/00 1", ".png", flat=True) == "site_00_1.png"
    with pytest.raises(UnsafePairId):
        pair_file_name("../x", ".png", flat=True)
