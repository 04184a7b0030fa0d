"""Dictionary transforms for CT <-> MRI translation (MONAI ``MapTransform`` subclasses).

Array conventions
-----------------
* Network images are float32, channel-first, 1 channel, values in [-1, 1] with -1 = background / air.
* 2D image files are loaded with MONAI's ``PILReader(reverse_indexing=False)``, so arrays are ``(C, H, W)``:
  row 0 is the top of the picture, exactly as PIL / matplotlib show it, and ``PIL.Image.fromarray(a[0])`` of
  a transformed image is upright. The horizontal axis is the last one: ``RandFlipd(spatial_axis=1)`` flips
  left-right. (MONAI's default ``reverse_indexing=True`` would give ``(C, W, H)``, a transposed picture.)
* 3D volumes are reoriented to ``"PLS"`` by default (array axis 0 runs anterior -> posterior, axis 1 runs
  patient right -> patient left, axis 2 inferior -> superior). An axial slice ``vol[0, :, :, k]`` is then an
  upright picture in the radiological convention (anterior at the top, patient's right on the viewer's left),
  the same orientation as the 2D training images, so a 2D model applies to volume slices unchanged.

Intensity transforms (``CTWindowd``, ``MRINormalized``, ``EightBitToUnitd``) do not push onto MONAI's
``applied_operations``: MONAI's ``Invertd`` / ``Compose.inverse`` undo only the spatial operations. Their
parameters are kept in ``meta["ctmri_intensity"]`` and undone with ``inverse(data)`` or the functional forms
``ct_from_unit`` / ``mri_from_unit`` / ``eight_bit_from_unit``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    CenterSpatialCrop,
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    InvertibleTransform,
    LoadImaged,
    MapTransform,
    Orientationd,
    RandFlipd,
    Randomizable,
    RandSpatialCrop,
    Resize,
    ResizeWithPadOrCrop,
    ResizeWithPadOrCropd,
    Spacingd,
)

__all__ = [
    "INTENSITY_META_KEY",
    "IMAGE_SUFFIXES",
    "InputImageError",
    "find_input_error",
    "CTWindowd",
    "MRINormalized",
    "EightBitToUnitd",
    "ToGrayscaled",
    "SizePolicyd",
    "PadOrCropd",
    "SafeLoadImaged",
    "CheckImaged",
    "intensity_transform",
    "ct_to_unit",
    "ct_from_unit",
    "mri_to_unit",
    "mri_from_unit",
    "eight_bit_from_unit",
    "pil_to_supported_mode",
    "image_file_transforms",
    "volume_slice_transforms",
    "HORIZONTAL_FLIP_AXIS",
    "DEFAULT_AXCODES",
]

INTENSITY_META_KEY = "ctmri_intensity"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
HORIZONTAL_FLIP_AXIS = 1  # spatial axis of a (C, H, W) image (or of a "PLS" axial slice) that runs left-right
DEFAULT_AXCODES = "PLS"
ORIENTATION_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # MONAI labels for RAS-style axis codes
SIZE_POLICIES = ("fit", "crop", "resize_crop")


class InputImageError(ValueError):
    """A bad input file or folder: the message names the path and the problem."""


def find_input_error(exc: BaseException | None) -> InputImageError | None:
    """Return the ``InputImageError`` behind ``exc`` (MONAI wraps transform errors in ``RuntimeError``)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, InputImageError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _source_name(img: Any) -> str:
    """Best-effort file name of a loaded image, for error messages."""
    if isinstance(img, MetaTensor):
        name = img.meta.get("filename_or_obj")
        if name:
            return str(name)
    return "<in-memory image>"


def _as_meta_tensor(img: Any) -> MetaTensor:
    if isinstance(img, MetaTensor):
        return img
    return MetaTensor(torch.as_tensor(np.asarray(img) if not isinstance(img, torch.Tensor) else img))


def _with_intensity_meta(out: torch.Tensor, src: MetaTensor, params: dict) -> MetaTensor:
    out = out if isinstance(out, MetaTensor) else MetaTensor(out)
    out.copy_meta_from(src, copy_attr=True)
    out.meta = dict(out.meta)
    out.meta[INTENSITY_META_KEY] = dict(params)
    return out


def _intensity_params(img: Any) -> dict | None:
    if isinstance(img, MetaTensor):
        params = img.meta.get(INTENSITY_META_KEY)
        if isinstance(params, Mapping):
            return dict(params)
    return None


def _drop_intensity_meta(out: torch.Tensor, src: Any) -> torch.Tensor:
    if isinstance(src, MetaTensor):
        out = out if isinstance(out, MetaTensor) else MetaTensor(out)
        out.copy_meta_from(src, copy_attr=True)
        out.meta = {k: v for k, v in src.meta.items() if k != INTENSITY_META_KEY}
    return out


def _float_tensor(x: Any) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t if t.is_floating_point() else t.float()


# ----------------------------------------------------------------------------------------- functional forms
def ct_to_unit(hu: Any, window: Sequence[float] = (-1000.0, 1000.0), clip: bool = True) -> torch.Tensor:
    """Map Hounsfield units linearly from ``window`` to [-1, 1] (clipped when ``clip``)."""
    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise ValueError(f"CT window must have upper > lower, got {tuple(window)}")
    x = (_float_tensor(hu) - lo) * (2.0 / (hi - lo)) - 1.0
    return x.clamp(-1.0, 1.0) if clip else x


def ct_from_unit(x: Any, window: Sequence[float] = (-1000.0, 1000.0)) -> torch.Tensor:
    """Inverse of ``ct_to_unit``: [-1, 1] -> Hounsfield units."""
    lo, hi = float(window[0]), float(window[1])
    return (_float_tensor(x) + 1.0) * ((hi - lo) / 2.0) + lo


def mri_to_unit(x: Any, lo: float, hi: float, clip: bool = True) -> torch.Tensor:
    """Map MRI intensities linearly so ``lo`` -> -1 and ``hi`` -> +1 (clipped when ``clip``)."""
    lo, hi = float(lo), float(hi)
    y = (_float_tensor(x) - lo) * (2.0 / (hi - lo)) - 1.0
    return y.clamp(-1.0, 1.0) if clip else y


def mri_from_unit(x: Any, lo: float, hi: float) -> torch.Tensor:
    """Inverse of ``MRINormalized``: [-1, 1] -> the original MRI intensity scale."""
    return (_float_tensor(x) + 1.0) * ((float(hi) - float(lo)) / 2.0) + float(lo)


def eight_bit_from_unit(x: Any) -> torch.Tensor:
    """Inverse of ``EightBitToUnitd``: [-1, 1] -> [0, 255] (float; round and clip to save as 8-bit)."""
    return (_float_tensor(x) + 1.0) * 127.5


# --------------------------------------------------------------------------------------- intensity transforms
class _IntensityBase(MapTransform):
    """Shared ``__call__`` / ``inverse`` plumbing for the intensity transforms."""

    kind = ""

    def _forward(self, img: MetaTensor) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def _backward(self, img: torch.Tensor, params: dict) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            src = _as_meta_tensor(d[key])
            out, params = self._forward(src)
            d[key] = _with_intensity_meta(out, src, {"kind": self.kind, **params})
        return d

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Undo the intensity mapping using the parameters recorded in the meta data (or the defaults)."""
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            params = _intensity_params(img) or {}
            if params.get("kind", self.kind) != self.kind:
                raise ValueError(f"{key!r} was mapped by {params.get('kind')!r}, not {self.kind!r}")
            d[key] = _drop_intensity_meta(self._backward(_float_tensor(img), params), img)
        return d


class CTWindowd(_IntensityBase):
    """Hounsfield units -> [-1, 1] linearly over ``window`` (clipped). Records ``{"kind", "window"}``."""

    kind = "ct_window"

    def __init__(
        self,
        keys: KeysCollection,
        window: Sequence[float] = (-1000.0, 1000.0),
        clip: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(window) != 2 or not float(window[1]) > float(window[0]):
            raise ValueError(f"CT window must be (lower, upper) with upper > lower, got {window}")
        self.window = (float(window[0]), float(window[1]))
        self.clip = clip

    def _forward(self, img: MetaTensor) -> tuple[torch.Tensor, dict]:
        return ct_to_unit(img, self.window, self.clip), {"window": list(self.window)}

    def _backward(self, img: torch.Tensor, params: dict) -> torch.Tensor:
        return ct_from_unit(img, params.get("window", self.window))


class MRINormalized(_IntensityBase):
    """Percentile normalisation of MRI to [-1, 1]: the ``lower_percentile`` -> -1, ``upper_percentile`` -> +1.

    Percentiles are taken over foreground voxels (``> foreground_threshold``; default: ``> min value``).
    Records ``{"kind", "lo", "hi"}``.
    """

    kind = "mri_norm"

    def __init__(
        self,
        keys: KeysCollection,
        lower_percentile: float = 0.5,
        upper_percentile: float = 99.5,
        foreground_threshold: float | None = None,
        clip: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not 0.0 <= lower_percentile < upper_percentile <= 100.0:
            raise ValueError(f"need 0 <= lower < upper <= 100, got {lower_percentile}, {upper_percentile}")
        self.lower_percentile = float(lower_percentile)
        self.upper_percentile = float(upper_percentile)
        self.foreground_threshold = foreground_threshold
        self.clip = clip

    def _forward(self, img: MetaTensor) -> tuple[torch.Tensor, dict]:
        values = img.detach().cpu().float().numpy().ravel()
        values = values[np.isfinite(values)]
        if values.size == 0:
            raise InputImageError(f"{_source_name(img)}: image has no finite values")
        threshold = values.min() if self.foreground_threshold is None else self.foreground_threshold
        fg = values[values > threshold]
        if fg.size == 0:
            fg = values
        lo, hi = np.percentile(fg, [self.lower_percentile, self.upper_percentile])
        lo, hi = float(lo), float(hi)
        if not hi > lo:
            hi = lo + 1.0  # constant image: everything maps to -1
        return mri_to_unit(img, lo, hi, self.clip), {"lo": lo, "hi": hi}

    def _backward(self, img: torch.Tensor, params: dict) -> torch.Tensor:
        if "lo" not in params or "hi" not in params:
            raise ValueError("MRINormalized.inverse needs meta['ctmri_intensity'] with 'lo' and 'hi'")
        return mri_from_unit(img, params["lo"], params["hi"])


class EightBitToUnitd(_IntensityBase):
    """8-bit values [0, 255] -> [-1, 1]. Records ``{"kind": "eight_bit"}``."""

    kind = "eight_bit"

    def _forward(self, img: MetaTensor) -> tuple[torch.Tensor, dict]:
        return _float_tensor(img) / 127.5 - 1.0, {}

    def _backward(self, img: torch.Tensor, params: dict) -> torch.Tensor:
        return eight_bit_from_unit(img)


def intensity_transform(domain: str, keys: KeysCollection = ("image",), **params: Any) -> MapTransform:
    """The intensity transform for ``domain``: "eight_bit" (2D image files), "ct" or "mri" (volumes).

    Extra ``params`` go to the transform (``window=...`` for CT; percentiles for MRI). ``ct_window`` and
    ``mri_percentiles=(lo, hi)`` are accepted as aliases so one parameter set can serve both domains.
    """
    domain = domain.lower()
    ct_window = params.pop("ct_window", None)
    mri_percentiles = params.pop("mri_percentiles", None)
    if domain in ("eight_bit", "image", "8bit"):
        return EightBitToUnitd(keys, **params)
    if domain == "ct":
        if ct_window is not None:
            params.setdefault("window", tuple(ct_window))
        return CTWindowd(keys, **params)
    if domain in ("mri", "mr"):
        if mri_percentiles is not None:
            params.setdefault("lower_percentile", float(mri_percentiles[0]))
            params.setdefault("upper_percentile", float(mri_percentiles[1]))
        return MRINormalized(keys, **params)
    raise ValueError(f"unknown intensity domain {domain!r}; expected 'eight_bit', 'ct' or 'mri'")


# ---------------------------------------------------------------------------------------------- grayscale
class ToGrayscaled(MapTransform):
    """Channel-first RGB / RGBA -> 1 channel (ITU-R 601 luma); 1-channel images pass through."""

    LUMA = (0.299, 0.587, 0.114)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = _as_meta_tensor(d[key])
            channels = img.shape[0]
            if channels == 1:
                d[key] = img
                continue
            if channels == 2:  # gray + alpha
                out = img[:1]
            elif channels in (3, 4):  # RGB(A); alpha is dropped
                w = torch.tensor(self.LUMA, dtype=torch.float32).view(3, *([1] * (img.ndim - 1)))
                out = (_float_tensor(img[:3].as_tensor()) * w).sum(0, keepdim=True)
            else:
                raise InputImageError(f"{_source_name(img)}: cannot make grayscale from {channels} channels")
            out = MetaTensor(out) if not isinstance(out, MetaTensor) else out
            out.copy_meta_from(img, copy_attr=True)
            d[key] = out
        return d


# -------------------------------------------------------------------------------------------- size policy
class SizePolicyd(MapTransform, InvertibleTransform, Randomizable):
    """Bring 2D channel-first images to ``spatial_size`` x ``spatial_size``; MONAI-invertible.

    * ``"fit"``: scale so the longer side equals ``spatial_size`` (aspect kept, up or down), then pad with
      ``background``. Nothing of the picture is lost.
    * ``"crop"``: no scaling; center crop what is larger than ``spatial_size`` and pad what is smaller (the
      paper's "center crop plus padding").
    * ``"resize_crop"``: scale so the shorter side equals ``round(spatial_size * 286 / 256)``, then crop
      (random position when ``random=True``, else center), as the reference CycleGAN's training augmentation.

    The inverse refills what a crop removed with ``background`` (MONAI alone would refill with 0).
    Built from MONAI's invertible ``Resize``, ``ResizeWithPadOrCrop``, ``RandSpatialCrop`` and
    ``CenterSpatialCrop``; ``inverse`` delegates to them, so ``Invertd`` / ``Compose.inverse`` restore the
    original shape.
    """

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: int = 256,
        policy: str = "fit",
        background: float = -1.0,
        random: bool = False,
        mode: str = "bilinear",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if policy not in SIZE_POLICIES:
            raise ValueError(f"unknown size policy {policy!r}; expected one of {SIZE_POLICIES}")
        self.spatial_size = int(spatial_size)
        self.policy = policy
        self.background = float(background)
        self.random = bool(random)
        s = self.spatial_size
        self.load_size = int(round(s * 286 / 256))
        self._resize_longest = Resize(s, size_mode="longest", mode=mode, anti_aliasing=True)
        self._resize_shorter = Resize((s, s), mode=mode, anti_aliasing=True)  # size set per image
        self._pad_or_crop = ResizeWithPadOrCrop((s, s), mode="constant", value=self.background)
        self._rand_crop = RandSpatialCrop((s, s), random_center=True, random_size=False)
        self._center_crop = CenterSpatialCrop((s, s))

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self._rand_crop.set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        pass  # the inner RandSpatialCrop draws its own position

    def _steps(self) -> list:
        if self.policy == "fit":
            return [self._resize_longest, self._pad_or_crop]
        if self.policy == "crop":
            return [self._pad_or_crop]
        return [self._resize_shorter, self._rand_crop if self.random else self._center_crop]

    def _apply(self, img: torch.Tensor) -> torch.Tensor:
        if img.ndim != 3:
            raise InputImageError(
                f"{_source_name(img)}: SizePolicyd expects a (C, H, W) image, got {tuple(img.shape)}"
            )
        for step in self._steps():
            if step is self._resize_shorter:
                h, w = img.shape[1:]
                scale = self.load_size / min(h, w)
                step.spatial_size = (max(self.load_size, int(round(h * scale))),
                                     max(self.load_size, int(round(w * scale))))
            img = step(img)
        return img

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self._apply(_as_meta_tensor(d[key]))
        return d

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            for step in reversed(self._steps()):
                # MONAI pads with 0 when it undoes a crop: shift so that the refill is ``background``
                img = step.inverse(img - self.background) + self.background
            d[key] = img
        return d


class PadOrCropd(ResizeWithPadOrCropd):
    """``ResizeWithPadOrCropd`` padding with ``background``; its inverse refills cropped parts with it too."""

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: Sequence[int] | int,
        background: float = -1.0,
        method: str = "symmetric",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, spatial_size, mode="constant", method=method,
                         allow_missing_keys=allow_missing_keys, value=float(background))
        self.background = float(background)

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = d[key] - self.background
        d = super().inverse(d)
        for key in self.key_iterator(d):
            d[key] = d[key] + self.background
        return d


# ----------------------------------------------------------------------------------- loading and checking
def pil_to_supported_mode(image: Any) -> Any:
    """PIL converter: palette / alpha / CMYK -> RGB or L, 16-bit and float -> 8-bit L (scaled by range)."""
    mode = image.mode
    if mode in ("L", "RGB"):
        return image
    if mode in ("1", "LA", "La"):
        return image.convert("L")
    if mode.startswith("I") or mode == "F":
        from PIL import Image

        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or (arr.size and arr.max() > 255) else 255.0
        return Image.fromarray(np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8), mode="L")
    return image.convert("RGB")


class SafeLoadImaged(LoadImaged):
    """``LoadImaged`` that turns any reading failure into one ``InputImageError`` naming the file.

    A folder is read as one DICOM series with the conversion's ``SimpleITKReader`` (unless a reader is given
    at call time), so training refuses what conversion refuses: several series in one folder (the error lists
    them), missing slices or uneven spacing, unsupported transfer syntaxes.
    """

    def __call__(self, data: Mapping[Hashable, Any], reader: Any = None) -> dict[Hashable, Any]:
        names = {str(k): data.get(k) for k in self.key_iterator(dict(data))}
        for name in names.values():
            path = Path(str(name))
            if isinstance(name, (str, Path)) and not path.exists():
                raise InputImageError(f"{name}: file not found")
            if isinstance(name, (str, Path)) and path.is_file() and path.stat().st_size == 0:
                raise InputImageError(f"{name}: file is empty")
        from ctmri_monai.convert.io import ConversionError, SimpleITKReader  # lazy: convert imports this module

        if reader is None and any(isinstance(n, (str, Path)) and Path(str(n)).is_dir() for n in names.values()):
            reader = SimpleITKReader()
        try:
            return super().__call__(data, reader)
        except InputImageError:
            raise
        except ConversionError as exc:  # already "path: problem", possibly over several lines
            raise InputImageError(str(exc)) from exc
        except Exception as exc:  # noqa: BLE001 - any reader failure becomes a clear input error
            names_str = ", ".join(str(v) for v in names.values())
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputImageError(f"{names_str}: cannot read image ({type(exc).__name__}: {detail})") from exc


class CheckImaged(MapTransform):
    """Check a loaded channel-first image: ``spatial_ndim`` spatial axes, non-empty, at most ``max_channels``
    channels, all values finite and, with ``reject_constant``, not all equal. Raises ``InputImageError`` naming
    the file."""

    def __init__(
        self,
        keys: KeysCollection,
        spatial_ndim: int = 2,
        max_channels: int = 4,
        reject_constant: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spatial_ndim = int(spatial_ndim)
        self.max_channels = int(max_channels)
        self.reject_constant = bool(reject_constant)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            name = _source_name(img)
            shape = tuple(img.shape)
            if len(shape) != self.spatial_ndim + 1:
                raise InputImageError(
                    f"{name}: expected a {self.spatial_ndim}D image, got array shape {shape[1:]} "
                    f"with {shape[0]} channel(s)"
                )
            if shape[0] > self.max_channels:
                extra = f" (a {self.spatial_ndim + 1}D series?)" if self.max_channels == 1 else ""
                raise InputImageError(
                    f"{name}: expected a {self.spatial_ndim}D image with at most {self.max_channels} "
                    f"channel(s), got {shape[0]} channels/frames{extra}"
                )
            if min(shape) == 0:
                raise InputImageError(f"{name}: image is empty (shape {shape})")
            t = img if isinstance(img, torch.Tensor) else torch.as_tensor(np.asarray(img))
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise InputImageError(f"{name}: image contains NaN or Inf values")
            if self.reject_constant and bool(t.min() == t.max()):
                what = "no axial slice has anatomy: constant volume" if self.spatial_ndim == 3 else "constant image"
                raise InputImageError(f"{name}: {what} (every voxel is {float(t.min()):g}; blank or missing "
                                      "pixel data?)")
        return d


# ------------------------------------------------------------------------------------------- pipelines
def image_file_transforms(
    image_size: int = 256,
    size_policy: str = "fit",
    training: bool = True,
    keys: KeysCollection = ("image",),
) -> Compose:
    """Pipeline for 2D image files (PNG, JPEG, ...): (1, S, S) float32 in [-1, 1], upright ``(C, H, W)``.

    Training adds a random horizontal flip (``RandFlipd`` on ``HORIZONTAL_FLIP_AXIS``) and, for the
    ``"resize_crop"`` policy, a random crop position.
    """
    keys = [keys] if isinstance(keys, str) else list(keys)
    steps: list = [
        SafeLoadImaged(keys, reader="PILReader", image_only=True, reverse_indexing=False,
                       converter=pil_to_supported_mode),
        EnsureChannelFirstd(keys),
        CheckImaged(keys, spatial_ndim=2, max_channels=4),
        ToGrayscaled(keys),
        EightBitToUnitd(keys),
        SizePolicyd(keys, spatial_size=image_size, policy=size_policy, background=-1.0, random=training),
    ]
    if training:
        steps.append(RandFlipd(keys, prob=0.5, spatial_axis=HORIZONTAL_FLIP_AXIS))
    steps.append(EnsureTyped(keys, dtype=torch.float32, track_meta=True))
    return Compose(steps)


def volume_slice_transforms(
    domain: str,
    pixdim: Sequence[float] = (1.0, 1.0),
    image_size: int = 256,
    ct_window: Sequence[float] = (-1000.0, 1000.0),
    mri_percentiles: Sequence[float] = (0.5, 99.5),
    keys: KeysCollection = ("image",),
    axcodes: str = DEFAULT_AXCODES,
    reader: Any = None,
) -> Compose:
    """Pipeline for 3D volumes (NIfTI file or DICOM series folder) -> (1, S, S, D) in [-1, 1].

    Load, channel first, orientation ``axcodes`` (default "PLS": upright axial slices along array axis 2),
    in-plane resampling to ``pixdim`` (slice spacing unchanged), intensity (CT window or MRI percentiles),
    then center crop / pad in-plane to ``image_size`` with background -1 (``PadOrCropd``: its inverse
    refills what was cropped with -1 too). Every spatial step is
    MONAI-invertible (``Invertd``); the intensity is undone with ``ct_from_unit`` / ``mri_from_unit``.
    """
    keys = [keys] if isinstance(keys, str) else list(keys)
    if len(pixdim) != 2:
        raise ValueError(f"pixdim must be the in-plane spacing (px, py), got {pixdim}")
    px, py = float(pixdim[0]), float(pixdim[1])
    return Compose([
        SafeLoadImaged(keys, reader=reader, image_only=True),
        EnsureChannelFirstd(keys),
        CheckImaged(keys, spatial_ndim=3, max_channels=1, reject_constant=True),
        Orientationd(keys, axcodes=axcodes, labels=ORIENTATION_LABELS),
        Spacingd(keys, pixdim=(px, py, -1.0), mode="bilinear", padding_mode="border"),
        intensity_transform(domain, keys=keys, ct_window=ct_window, mri_percentiles=mri_percentiles),
        PadOrCropd(keys, spatial_size=(image_size, image_size, -1), background=-1.0),
        EnsureTyped(keys, dtype=torch.float32, track_meta=True),
    ])

