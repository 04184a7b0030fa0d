"""The contract of a model about to be trained: its `ModelSpec`, from the dataset (layout and card) and the config.

* volumes layout: CT through the HU window ``ct_window``, MRI by foreground percentiles, slices resampled to
  ``pixdim`` mm and centre-cropped / padded (framing "spacing"); the training split's head sizes, in-head
  intensity quantiles and halves' distance are measured on a subsample of volumes (`ctmri_monai.data.reference`),
  for the domain gap of every conversion.
* images layout: the 8-bit CT images saw HU through the window they were exported with, which only the dataset
  card (or an explicit ``ct_window``) can tell; without it the window stays unknown and HU volumes will be refused
  at conversion. Slices are framed by the size policy; when the card gives the images' pixel size (the same
  network pixel size for both domains), by "spacing" at that network pixel size, so volumes are resampled to the
  anatomical scale the model saw. The training images' head sizes, in-head intensity quantiles and halves' distance
  are measured on a subsample (`ctmri_monai.data.reference`).
"""

from __future__ import annotations

import logging
import os
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from ctmri_monai.data.card import DatasetCard, find_card
from ctmri_monai.data.folders import IMAGE_FOLDERS, detect_layout, list_images
from ctmri_monai.data.reference import training_references, volume_training_references
from ctmri_monai.io.errors import ContractError, InputError
from ctmri_monai.spec import CTIntensity, ModelSpec, MRIIntensity, NetworkSpec, SliceGeometry
from ctmri_monai.transforms.spatial import framed_size

__all__ = ["network_pixdim", "spec_for_dataset"]

logger = logging.getLogger(__name__)


def network_pixdim(files: Sequence[Path], pixel_mm: float, image_size: int, size_policy: str) -> float:
    """The median pixel size (mm) the network sees when ``files`` (pixel size ``pixel_mm``) are framed by
    ``size_policy``: e.g. "fit" of a 96 px image at 2 mm into 64 px gives 3 mm."""
    sizes = []
    for f in files:
        try:
            with Image.open(f) as im:
                w, h = im.size
        except OSError as exc:
            raise InputError(f, f"cannot read image ({exc})") from exc
        resized = framed_size((h, w), (pixel_mm, pixel_mm), image_size, size_policy)
        sizes.append(pixel_mm * max(h, w) / max(resized))
    return float(statistics.median(sizes))


def _card_geometry(dataset_dir: Path, card: DatasetCard, image_size: int, size_policy: str,
                   context_slices: int) -> tuple[SliceGeometry, list[str]]:
    """"spacing" framing at the network pixel size when the card gives both domains' pixel size and they agree."""
    px = card.pixel_spacing_mm
    plain = SliceGeometry(image_size=image_size, framing=size_policy, pixdim=None, context_slices=context_slices)
    if px["ct"] is None or px["mri"] is None:
        return plain, []
    per_domain = [network_pixdim(list_images(dataset_dir / folder), px[domain], image_size, size_policy)
                  for folder, domain in zip(IMAGE_FOLDERS["train"], ("ct", "mri"), strict=True)]
    if abs(per_domain[0] - per_domain[1]) > 0.01 * max(per_domain):
        note = (f"the card's pixel sizes give the network {per_domain[0]:.3g} mm (CT) and {per_domain[1]:.3g} mm "
                f"(MRI) pixels: kept the '{size_policy}' framing")
        return plain, [note]
    pixdim = (round(per_domain[0], 6), round(per_domain[0], 6))
    note = (f"the card gives the images' pixel size: the network sees {pixdim[0]:g} mm pixels ('{size_policy}'), "
            "so volumes are resampled to it")
    return SliceGeometry(image_size=image_size, framing="spacing", pixdim=pixdim,
                         context_slices=context_slices), [note]


def spec_for_dataset(dataset_dir: str | os.PathLike, *, layout: str = "auto",
                     dataset_card: str | os.PathLike | None = None, image_size: int = 256, size_policy: str = "fit",
                     pixdim: Sequence[float] | None = None, ct_window: Sequence[float] | None = None,
                     mri_percentiles: Sequence[float] | None = None, context_slices: int = 0,
                     network: Mapping[str, Any] | None = None, val_fraction: float = 0.1,
                     seed: int = 0) -> ModelSpec:
    """The `ModelSpec` for training on ``dataset_dir`` (module docstring). ``None`` values take the `ModelSpec`
    defaults; with 2D images, an explicit ``ct_window`` declares their export window (over the card's).
    ``val_fraction`` / ``seed``: the training split of volumes (`split_files`), whose references are measured."""
    root = Path(dataset_dir)
    layout = detect_layout(root) if layout == "auto" else layout
    channels = 2 * int(context_slices) + 1
    net = NetworkSpec(**{**dict(network or {}), "in_channels": channels, "out_channels": 1})
    mri_kwargs = {} if mri_percentiles is None else {"percentiles": tuple(mri_percentiles)}
    if layout == "volumes":
        ct = CTIntensity(**({} if ct_window is None else {"window": tuple(ct_window)}))
        geometry = SliceGeometry(image_size=image_size, framing="spacing", context_slices=context_slices,
                                 **({} if pixdim is None else {"pixdim": tuple(pixdim)}))
        spec = ModelSpec(network=net, ct=ct, mri=MRIIntensity(**mri_kwargs), geometry=geometry, layout="volumes")
        spec.training = volume_training_references(root, spec, val_fraction, seed)
        return spec
    if context_slices:
        raise ContractError(root, f"context_slices {context_slices}: 2D image folders have no neighbouring slices; "
                                  "train with context_slices 0 or on a volumes layout")
    card = find_card(root, dataset_card)
    notes: list[str] = []
    window = None if card is None else card.ct_window
    if ct_window is not None:
        if window is not None and tuple(ct_window) != tuple(window):
            notes.append(f"ct_window {list(ct_window)} given for the images replaces the card's {list(window)}")
        window = tuple(ct_window)
    if window is None:
        notes.append("the HU window of the CT images is unknown (no dataset.json card declares ct.hu_window): HU "
                     "volumes cannot be converted without --ct-window")
    if card is not None and card.mri_percentiles is not None:
        mri = MRIIntensity(percentiles=card.mri_percentiles, stored_as="eight_bit")
    else:
        mri = MRIIntensity(**mri_kwargs, stored_as="eight_bit", declared=False)
    geometry, geometry_notes = (_card_geometry(root, card, image_size, size_policy, context_slices) if card
                                else (SliceGeometry(image_size=image_size, framing=size_policy, pixdim=None), []))
    for note in notes:
        logger.warning("model contract: %s", note)
    for note in geometry_notes:
        logger.info("model contract: %s", note)
    spec = ModelSpec(network=net, ct=CTIntensity(window=window, stored_as="eight_bit"), mri=mri, geometry=geometry,
                     layout="images", notes=notes + geometry_notes)
    spec.training = training_references(root, spec, card.pixel_spacing_mm if card is not None else None)
    return spec
