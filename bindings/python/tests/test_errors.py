"""Bad input raises the exception class of its status, with the message."""

import numpy as np
import pytest

import smolcap
from conftest import FIXTURES, IMAGES, TINY


def test_classes_carry_their_status():
    codes = {
        smolcap.InvalidArgumentError: 1, smolcap.IoError: 3, smolcap.FormatError: 4,
        smolcap.UnsupportedError: 5, smolcap.ImageError: 6, smolcap.LimitError: 7,
        smolcap.DeviceError: 8, smolcap.CancelledError: 9, smolcap.PanicError: 11,
        smolcap.InternalError: 13, smolcap.NumericError: 14,
    }
    for cls, status in codes.items():
        assert issubclass(cls, smolcap.SmolcapError) and cls.status == status


def test_bad_images(model, tmp_path):
    with pytest.raises(smolcap.IoError, match="no_such.png"):
        model.caption(tmp_path / "no_such.png")
    with pytest.raises(smolcap.ImageError, match="unrecognised image format"):
        model.caption(b"definitely not an image")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(smolcap.ImageError, match="bad.png"):
        model.caption(bad)
    with pytest.raises(smolcap.InvalidArgumentError, match="uint8"):
        model.caption(np.zeros((8, 8, 3), dtype=np.float32))
    with pytest.raises(smolcap.InvalidArgumentError, match="shape"):
        model.caption(np.zeros((8, 8, 5), dtype=np.uint8))
    with pytest.raises(smolcap.InvalidArgumentError, match="zero size"):
        model.caption(np.zeros((0, 8, 3), dtype=np.uint8))
    with pytest.raises(TypeError, match="an image must be"):
        model.caption(12345)
    # The whole list is checked before anything runs.
    with pytest.raises(TypeError):
        model.caption([IMAGES / "square_32x32.png", None])


def test_limits(model):
    small = smolcap.Model.load(TINY, max_image_pixels=100, max_image_bytes=1000)
    with pytest.raises(smolcap.LimitError, match="pixels"):
        small.caption(np.zeros((20, 20, 3), dtype=np.uint8))
    with pytest.raises(smolcap.LimitError, match="bytes"):
        small.caption(IMAGES / "photo_640x480.png")
    with pytest.raises(smolcap.LimitError, match="max_position_embeddings"):
        model.caption(IMAGES / "square_32x32.png", max_new_tokens=10**6)
    with pytest.raises(smolcap.LimitError, match="max_prompt_tokens"):
        model.caption(IMAGES / "photo_640x480.png", max_prompt_tokens=10)
    with pytest.raises(smolcap.LimitError, match="max_batch"):
        model.caption([IMAGES / "square_32x32.png"] * 3, batch_size=3, max_batch=2)


def test_bad_arguments(model, tmp_path):
    img = IMAGES / "square_32x32.png"
    with pytest.raises(TypeError, match='unexpected keyword argument "max_new_token"'):
        model.caption(img, max_new_token=3)
    with pytest.raises(smolcap.InvalidArgumentError, match="batch_size"):
        model.caption(img, batch_size=0)
    with pytest.raises(smolcap.InvalidArgumentError):
        model.caption(img, temperature=0.5, top_p=1.5)
    with pytest.raises(smolcap.InvalidArgumentError, match="finite"):
        model.caption(img, adapters=[(FIXTURES / "adapters" / "text_r4_a8", float("nan"))])
    with pytest.raises(smolcap.IoError):
        model.caption(img, adapters=[tmp_path / "missing_adapter"])
    # An empty caption scores the stop token alone.
    assert model.score_caption(img, "").tokens == 1
    with pytest.raises(TypeError):
        model.score_caption(img, "x", num_beams=2)


def test_bad_models(tmp_path):
    with pytest.raises((smolcap.IoError, smolcap.DeviceError)):
        smolcap.Model.load(tmp_path / "nothing_here")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(smolcap.FormatError, match="config.json"):
        smolcap.Model.load(tmp_path)
    with pytest.raises(smolcap.InvalidArgumentError, match="not a weight format"):
        smolcap.Model.load(TINY, quantize="q9")
    with pytest.raises(smolcap.InvalidArgumentError, match="not a model part"):
        smolcap.Model.load(TINY, quantize="q4_0,head=q8_0")
    with pytest.raises(smolcap.InvalidArgumentError):
        smolcap.Model.load(TINY, dtype="f8")
