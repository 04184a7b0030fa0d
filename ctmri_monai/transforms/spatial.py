"""The one in-plane framing: how a 2D image or every axial slice of a volume becomes the network's S x S frame.

The same class frames 2D training images (``(C, H, W)``) and volumes (``(C, X, Y, Z)``, axial slices along the
last axis, which is never resampled), so a model sees volume slices exactly as it saw its training images. Rules
(``SliceGeometry.framing``): "spacing" resamples to ``pixdim`` mm; "fit" scales the field of view so that its
longer side is S px; "crop" keeps the (finer) pixel size; "resize_crop" scales the shorter side to
``round(S * 286 / 256)`` px (the reference CycleGAN's load size). Then the frame is centre-cropped / padded with
``background`` to S x S ("resize_crop": a random crop position in training).

Head-scale framing (a "fit" model that recorded its training head size ``head_extent`` px, given the input's head
mask): a volume is scaled so that the median per-slice head extent of its slices that hold a head (longer in-plane
side of each slice's bounding box, `slice_extent`) spans ``head_extent`` px, the training images' median (single
slices), instead of fitting its field of view; capped so the head over all slices still fits S. The frame is cut
around the head's centre (MONAI ``SpatialCrop``) where the scaled image is larger than S, then padded. One scale
for every slice of a volume.

Resampling is MONAI's ``Resize`` (bilinear, Gaussian anti-aliasing when shrinking) on ``image - background``, so
the anti-aliasing filter's zero padding and the crop / pad fill are both background. Every step is recorded in
``applied_operations`` (the plan, resized size and head cut, in the last one's ``extra_info["frame"]``, so the
frame keeps no state between calls); ``inverse`` (and ``Compose.inverse``) restores the input's grid exactly.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.transforms import (
    CenterSpatialCrop,
    InvertibleTransform,
    MapTransform,
    Randomizable,
    RandSpatialCrop,
    Resize,
    ResizeWithPadOrCrop,
    SpatialCrop,
)
from monai.transforms.croppad.functional import crop_func
from monai.transforms.spatial.functional import resize
from monai.utils import TraceKeys

from ctmri_monai.io.errors import InputError
from ctmri_monai.spec import FRAMINGS, SliceGeometry
from ctmri_monai.transforms.mask import mask_extent, slice_extent

__all__ = ["HORIZONTAL_FLIP_AXIS", "InPlaneFrame", "InPlaneFramed", "frame_record", "framed_size",
           "in_plane_spacing"]

HORIZONTAL_FLIP_AXIS = 1  # spatial axis of a (C, H, W) image (or a "PLS" axial slice) that runs left-right
LOAD_SIZE_RATIO = 286 / 256  # the reference CycleGAN's load size for crops of 256
HEAD_ROOM = 0.95  # the share of the frame the head over all slices may span at most (head framing)


def in_plane_spacing(img: torch.Tensor, source_pixdim: Sequence[float] | None = None) -> tuple[float, float]:
    """Pixel size (mm) of the two in-plane axes: ``source_pixdim`` when given, else from a 3D image's affine,
    else 1 (a 2D image file: pixels)."""
    if source_pixdim is not None:
        return float(source_pixdim[0]), float(source_pixdim[1])
    if img.ndim == 4 and isinstance(img, MetaTensor):
        spacing = np.asarray(affine_to_spacing(img.affine, r=3), dtype=np.float64)
        return float(spacing[0]), float(spacing[1])
    return 1.0, 1.0


def framed_size(shape: Sequence[int], spacing: Sequence[float], image_size: int, framing: str,
                pixdim: Sequence[float] | None = None) -> tuple[int, int]:
    """The in-plane size an image of ``shape`` (two axes) with ``spacing`` is resampled to before crop / pad."""
    if framing not in FRAMINGS:
        raise ValueError(f"unknown framing {framing!r}; expected one of {FRAMINGS}")
    fov = [int(n) * float(s) for n, s in zip(shape, spacing, strict=True)]
    if framing == "spacing":
        target = [float(p) for p in pixdim]  # type: ignore[union-attr]
    elif framing == "fit":
        target = [max(fov) / image_size] * 2
    elif framing == "crop":
        target = [min(float(s) for s in spacing)] * 2
    else:
        load = int(round(image_size * LOAD_SIZE_RATIO))
        target = [min(fov) / load] * 2
        return tuple(max(load, int(round(f / t))) for f, t in zip(fov, target, strict=True))  # type: ignore
    return tuple(max(1, int(round(f / t))) for f, t in zip(fov, target, strict=True))  # type: ignore[return-value]


class InPlaneFrame(InvertibleTransform, Randomizable):
    """Frame a ``(C, H, W)`` image or a ``(C, X, Y, Z)`` volume in-plane to ``image_size`` x ``image_size``.

    Args:
        image_size: S, the network's frame.
        framing: "spacing", "fit", "crop" or "resize_crop" (module docstring).
        pixdim: in-plane mm of the "spacing" framing.
        source_pixdim: pixel size of 2D image files when known (a dataset card); volumes use their affine.
        random_crop: "resize_crop" crops at a random position (training) instead of the centre.
        background: the value of air in the input's scale ([-1, 1] network scale: -1).
        head_extent: "fit" only: frame by the head (module docstring) at this extent in px, when the call gives
            a head mask.
    """

    def __init__(self, image_size: int, framing: str = "fit", pixdim: Sequence[float] | None = None,
                 source_pixdim: Sequence[float] | None = None, random_crop: bool = False,
                 background: float = -1.0, head_extent: float | None = None) -> None:
        self.geometry = SliceGeometry(image_size=image_size, framing=framing, pixdim=pixdim)
        self.source_pixdim = source_pixdim
        self.background = float(background)
        self.head_extent = float(head_extent) if head_extent and framing == "fit" else None
        # The instances below are never changed by a call (their size comes with it): their ids tag the
        # operations they invert.
        self._head_crop = SpatialCrop(roi_slices=[slice(None)] * 3)
        s = self.geometry.image_size
        self._resize = {2: Resize((s, s), mode="bilinear", anti_aliasing=True),
                        3: Resize((s, s, -1), mode="bilinear", anti_aliasing=True)}
        self._pad_or_crop = {2: ResizeWithPadOrCrop((s, s)), 3: ResizeWithPadOrCrop((s, s, -1))}
        crop = RandSpatialCrop if random_crop and framing == "resize_crop" else CenterSpatialCrop
        self._crop = {2: crop((s, s)), 3: crop((s, s, -1))}
        self.random_crop = random_crop

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        for crop in self._crop.values():
            if isinstance(crop, Randomizable):
                crop.set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        pass  # the inner RandSpatialCrop draws its own position

    def head_scale(self, shape: Sequence[int], mask: Any) -> tuple[tuple[int, int], tuple[float, float]] | None:
        """(resized in-plane size, head centre in it) of head-scale framing for an input of in-plane ``shape``
        with head ``mask`` (in-plane axes first); None when this frame does not frame by the head.

        The scale brings the median per-slice head extent (`slice_extent`) to the training median, which was taken
        over single images; it is capped so that the head's bounding box over all slices still fits the frame."""
        if not self.head_extent or mask is None:
            return None
        mask = np.asarray(mask, dtype=bool)
        typical, whole = slice_extent(mask), mask_extent(mask)
        if typical is None or whole is None or typical <= 0:
            return None
        room = HEAD_ROOM * self.geometry.image_size  # the whole head stays off the frame's edge
        scale = min(self.head_extent / typical, room / whole[0])  # square pixels in the frame
        size = tuple(max(1, int(round(int(n) * scale))) for n in shape[:2])
        return size, (whole[1][0] * size[0] / shape[0], whole[1][1] * size[1] / shape[1])  # type: ignore

    def plan(self, img: torch.Tensor, head_mask: Any = None) -> tuple[tuple[int, int], tuple[int, int] | None]:
        """(in-plane size the image is resized to, start of the head-centred S x S cut in it or None) of framing
        ``img`` (module docstring); a pure function of the image's shape, spacing and head."""
        spacing = in_plane_spacing(img, self.source_pixdim)
        head = None
        if abs(spacing[0] - spacing[1]) <= 1e-3 * max(spacing):  # head-scale framing assumes square pixels
            head = self.head_scale(img.shape[1:3], head_mask)
        if head is None:
            return framed_size(img.shape[1:3], spacing, self.geometry.image_size, self.geometry.framing,
                               self.geometry.pixdim), None
        s = self.geometry.image_size
        size, centre = head
        starts = tuple(int(np.clip(round(c - s / 2.0), 0, max(n - s, 0))) for c, n in zip(centre, size, strict=True))
        return size, starts  # type: ignore[return-value]

    def __call__(self, img: torch.Tensor, head_mask: Any = None) -> MetaTensor:
        """Frame ``img``; ``head_mask`` ((H, W) or (X, Y, Z), the input's head) selects head-scale framing. The
        plan (resized size, head cut) is recorded in the last operation's ``extra_info["frame"]``."""
        img = img if isinstance(img, MetaTensor) else MetaTensor(img)
        ndim = img.ndim - 1
        if ndim not in (2, 3):
            name = img.meta.get("filename_or_obj", "<in-memory image>")
            raise InputError(name, f"in-plane framing expects (C, H, W) or (C, X, Y, Z), got {tuple(img.shape)}")
        size, starts = self.plan(img, head_mask)
        out = img - self.background
        out = resize(out, (*size, *out.shape[3:]), "bilinear", None, torch.float32, ndim, True, None, False,
                     self._resize[ndim].get_transform_info())
        if starts is not None:
            s = self.geometry.image_size
            cut = (slice(None), *(slice(a, a + s) for a in starts), *(slice(None),) * (ndim - 2))  # channel first
            out = crop_func(out, cut, False, self._head_crop.get_transform_info())
        last = self._crop if self.geometry.framing == "resize_crop" else self._pad_or_crop
        out = last[ndim](out)
        if isinstance(out, MetaTensor) and out.applied_operations:
            out.applied_operations[-1][TraceKeys.EXTRA_INFO]["frame"] = {
                "resized": [int(v) for v in size], "head_cut": None if starts is None else list(starts)}
        return out + self.background

    def inverse(self, data: torch.Tensor) -> MetaTensor:
        img = data - self.background  # MONAI refills cropped parts with 0: background after the shift
        ops = getattr(img, "applied_operations", [])
        record = ops[-1].get(TraceKeys.EXTRA_INFO, {}).get("frame") if ops else None
        if record is None:
            raise ValueError("this image was not framed by InPlaneFrame (no frame record on its last operation)")
        ndim = img.ndim - 1
        last = self._crop if self.geometry.framing == "resize_crop" else self._pad_or_crop
        steps = [self._resize[ndim], *([self._head_crop] if record["head_cut"] is not None else []), last[ndim]]
        for step in reversed(steps):
            img = step.inverse(img)
        return img + self.background


def frame_record(img: Any) -> dict[str, Any]:
    """The framing plan of a framed image: {"resized": [h, w] before crop / pad, "head_cut": [r, c] or None}."""
    for op in reversed(getattr(img, "applied_operations", [])):
        record = op.get(TraceKeys.EXTRA_INFO, {}).get("frame")
        if record is not None:
            return record
    raise ValueError("this image was not framed by InPlaneFrame (no frame record in its applied operations)")


class InPlaneFramed(MapTransform, InvertibleTransform, Randomizable):
    """Dictionary wrapper of `InPlaneFrame` (built from a `SliceGeometry` with `from_geometry`). ``head_key``:
    the key of the input's head mask (+1 head, -1 air; framed like the image) that head-scale framing reads."""

    def __init__(self, keys: KeysCollection, image_size: int, framing: str = "fit",
                 pixdim: Sequence[float] | None = None, source_pixdim: Sequence[float] | None = None,
                 random_crop: bool = False, background: float = -1.0, allow_missing_keys: bool = False,
                 head_extent: float | None = None, head_key: str | None = None) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.frame = InPlaneFrame(image_size, framing, pixdim, source_pixdim, random_crop, background, head_extent)
        self.head_key = head_key

    @classmethod
    def from_geometry(cls, keys: KeysCollection, geometry: SliceGeometry, **kwargs: Any) -> InPlaneFramed:
        return cls(keys, geometry.image_size, geometry.framing, geometry.pixdim, **kwargs)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.frame.set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        pass

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        head = d.get(self.head_key) if self.head_key else None
        mask = None if head is None else np.asarray(head.detach().cpu() if isinstance(head, torch.Tensor)
                                                    else head)[0] > 0
        for key in self.key_iterator(d):
            d[key] = self.frame(d[key], mask)
        return d

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.frame.inverse(d[key])
        return d
