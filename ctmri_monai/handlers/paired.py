"""Paired metrics where pairs exist (phantoms, registered CT / MR): the same anatomy in both domains.

Two roads, one definition (`PairedAccumulator`: MAE, PSNR, SSIM over the reference's head-mask voxels, SSIM in 2D
per axial slice), so that they can be compared:

* volumes (``volumes/ct/<name>`` and ``volumes/mri/<name>``, held-out subjects): each volume is translated in
  memory exactly as conversion does (`translate_volume`) and compared on its own grid;
* 2D image pairs (``testA/<name>`` and ``testB/<name>``): each image through the model's image pipeline, the
  generator, and the inverse framing back to the image's grid.

Synthetic CT is scored in HU inside the real CT's head mask: over the SynthRAD range [-1024, 3000] HU (volumes only;
an 8-bit image holds only its window) and, as ``*_window``, with both clipped to the model's CT window, which is
all a model trained on windowed images can express. Synthetic MRI is scored in the network's [-1, 1] scale against
the real MRI normalised by the model's contract. ``PairedMetricsHandler`` runs them after an evaluation and adds
the results to the engine's metrics (and so to the results table).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor
from monai.networks.utils import eval_mode
from monai.transforms import Orientation
from PIL import Image

from ctmri_monai.data.folders import IMAGE_FOLDERS, VOLUME_FOLDERS, manifest_test_subjects, split_files
from ctmri_monai.data.unpaired import dataset_transforms
from ctmri_monai.engines.slices import SliceRun, Translation, translate_volume
from ctmri_monai.io.volume import load_volume
from ctmri_monai.metrics.consistency import ngf_alignment, z_gradient_correlation, z_roughness_ratio
from ctmri_monai.metrics.paired import CT_DATA_RANGE, CT_HU_RANGE, PairedAccumulator, dice
from ctmri_monai.spec import ModelSpec
from ctmri_monai.transforms.intensity import MRINormalize, ct_from_unit, eight_bit_to_unit
from ctmri_monai.transforms.loading import pil_to_gray
from ctmri_monai.transforms.mask import image_head_mask, input_head_mask, physical_head_mask
from ctmri_monai.transforms.pipelines import ORIENTATION_LABELS

__all__ = ["PairedMetricsHandler", "evaluate_image_pairs", "evaluate_volume_pairs", "held_out_image_pairs",
           "held_out_volume_pairs"]

logger = logging.getLogger(__name__)
Generator = Callable[[torch.Tensor], torch.Tensor]


def held_out_volume_pairs(dataset_dir: str | os.PathLike, val_fraction: float = 0.1,
                          seed: int = 0) -> list[tuple[Path, Path]]:
    """(CT, MRI) volumes sharing a name under ``volumes/``, both in the "test" split of `split_files`, the function
    that also chose the training files: the phantom manifest's test subjects, else the validation split (none
    when ``val_fraction`` is 0). A subject is scored only when neither of its volumes trained."""
    root = Path(dataset_dir)
    if not all((root / f).is_dir() for f in VOLUME_FOLDERS):
        return []
    if val_fraction <= 0.0 and not manifest_test_subjects(root):
        return []
    ct, mri = split_files(root, "volumes", "test", val_fraction, seed)
    held_out_mri = {p.name: p for p in mri}
    return [(p, held_out_mri[p.name]) for p in ct if p.name in held_out_mri]


def held_out_image_pairs(dataset_dir: str | os.PathLike) -> list[tuple[Path, Path]]:
    """(CT, MRI) 2D images sharing a file name in ``testA`` / ``testB`` (paired test slices, e.g. phantoms)."""
    a, b = (Path(dataset_dir) / f for f in IMAGE_FOLDERS["test"])
    if not (a.is_dir() and b.is_dir()):
        return []
    return [(p, b / p.name) for p in sorted(a.iterdir()) if p.is_file() and (b / p.name).is_file()]


def _scores(ct: PairedAccumulator | None, ct_window: PairedAccumulator, mri: PairedAccumulator,
            n_pairs: int) -> dict[str, float]:
    out: dict[str, float] = {"n_pairs": n_pairs}
    if ct is not None:
        r = ct.result()
        out.update(mae_mri2ct_hu=r["mae"], psnr_mri2ct=r["psnr"], ssim_mri2ct=r["ssim"])
    r = ct_window.result()
    out.update(mae_mri2ct_hu_window=r["mae"], ssim_mri2ct_window=r["ssim"])
    r = mri.result()
    out.update(mae_ct2mri=r["mae"], psnr_ct2mri=r["psnr"], ssim_ct2mri=r["ssim"])
    return out


def _ras(image: MetaTensor) -> np.ndarray:
    """A (1, X, Y, Z) volume reoriented to RAS (axial slices along the last axis), as a (X, Y, Z) array."""
    return Orientation("RAS", labels=ORIENTATION_LABELS)(image).as_tensor()[0].numpy()


def evaluate_volume_pairs(pairs: Sequence[tuple[Path, Path]], generators: Mapping[str, Generator], spec: ModelSpec,
                          device: str = "cpu", batch_size: int = 16) -> dict[str, float]:
    """Paired metrics of both directions over volume ``pairs`` (module docstring); {} without pairs or without a
    known CT window (as for 2D pairs)."""
    window = spec.ct.window
    if not pairs or window is None:
        return {}
    ct_acc = PairedAccumulator(CT_DATA_RANGE, CT_HU_RANGE)
    ct_win = PairedAccumulator(window[1] - window[0], window)
    mri_acc = PairedAccumulator(2.0, (-1.0, 1.0))
    volume_figures: dict[str, list[float]] = {}
    for ct_path, mri_path in pairs:
        real_ct, real_mri = load_volume(ct_path).image, load_volume(mri_path).image
        ct_hu, mri_values = _ras(real_ct), _ras(real_mri)
        real = {"ct": ct_hu, "mri": np.asarray(MRINormalize(spec.mri.percentiles)(torch.from_numpy(mri_values)))}
        mask = physical_head_mask(ct_hu, "ct")  # in HU: a brain window's black fat and skin are head
        fake = {}
        for direction, (path, image, source, target) in {"mri2ct": (mri_path, real_mri, "mri", "ct"),
                                                         "ct2mri": (ct_path, real_ct, "ct", "mri")}.items():
            result = translate_volume(path, image, generators[direction], spec, source, target,
                                      SliceRun(batch_size, device, amp=False))
            fake[direction] = _ras(MetaTensor(torch.from_numpy(result.output.astype(np.float32))[None],
                                              affine=image.affine))
            figures = volume_consistency(fake[direction], real[source], real[target], mask, result, target)
            for key, value in figures.items():
                volume_figures.setdefault(f"{key}_{direction}", []).append(value)
        ct_acc.add(fake["mri2ct"], ct_hu, mask)
        ct_win.add(fake["mri2ct"], ct_hu, mask)
        mri_acc.add(fake["ct2mri"], real["mri"], mask)
    means = {key: float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
             for key, values in volume_figures.items()}
    return _scores(ct_acc, ct_win, mri_acc, len(pairs)) | means


def volume_consistency(output: np.ndarray, source: np.ndarray, reference: np.ndarray, mask: np.ndarray,
                       translation: Translation, target: str) -> dict[str, float]:
    """A converted volume's figures beside its paired metrics: ``through_plane_vs_real`` (z-gradient correlation
    with the real target; conversion's QA ``through_plane`` compares with the input instead), ``roughness``
    (slice-to-slice roughness over the input's, 1 is best), ``structure`` (edge alignment with the input,
    `ngf_alignment`), and ``dice`` (head masks of the input and the output on the input's grid, each in its own
    units: HU for CT, so a brain window's black fat and skin count as head)."""
    return {"through_plane_vs_real": z_gradient_correlation(output, reference, mask),
            "roughness": z_roughness_ratio(output, source, mask), "structure": ngf_alignment(output, source, mask),
            "dice": dice(translation.frames.inverse.input_head, output_head_mask(translation, target))}


def output_head_mask(translation: Translation, target: str) -> np.ndarray:
    """Head mask of a translation's output (of domain ``target``) on the input's grid, in the output's units."""
    inverse = translation.frames.inverse
    output = MetaTensor(torch.from_numpy(translation.output.astype(np.float32))[None], affine=inverse.affine)
    return input_head_mask(output, target)


def _png_unit(path: Path) -> torch.Tensor:
    with Image.open(path) as im:
        return eight_bit_to_unit(np.asarray(pil_to_gray(im)))


def evaluate_image_pairs(pairs: Sequence[tuple[Path, Path]], generators: Mapping[str, Generator], spec: ModelSpec,
                         dataset_dir: str | os.PathLike, dataset_card: str | os.PathLike | None = None,
                         device: str = "cpu") -> dict[str, float]:
    """Windowed paired metrics of both directions over 2D image ``pairs``, on each image's own grid; {} without
    pairs or without a known CT window."""
    window = spec.ct.window
    if not pairs or window is None:
        return {}
    transforms = dataset_transforms(spec, dataset_dir, training=False, dataset_card=dataset_card)
    ct_win = PairedAccumulator(window[1] - window[0], window)
    mri_acc = PairedAccumulator(2.0, (-1.0, 1.0))
    for ct_path, mri_path in pairs:
        real_ct, real_mri = _png_unit(ct_path), _png_unit(mri_path)
        fake = {}
        for direction, path, domain in (("mri2ct", mri_path, "mri"), ("ct2mri", ct_path, "ct")):
            x = transforms[domain]({"image": str(path)})["image"]
            net = generators[direction]
            with torch.no_grad():
                y = net(x.as_tensor()[None].to(device)).float().cpu()[0]
            y = MetaTensor(y, meta=dict(x.meta), applied_operations=list(x.applied_operations))
            fake[direction] = transforms[domain].inverse({"image": y})["image"].as_tensor()[0].clamp(-1.0, 1.0)
        mask = image_head_mask(real_ct.numpy())  # the whole head, as the volumes' HU mask
        ct_win.add(ct_from_unit(fake["mri2ct"], window).numpy(), ct_from_unit(real_ct, window).numpy(), mask)
        mri_acc.add(fake["ct2mri"].numpy(), real_mri.numpy(), mask)
    return _scores(None, ct_win, mri_acc, len(pairs))


class PairedMetricsHandler:
    """After an evaluation run, score held-out volume pairs (prefix ``volume_``) and 2D image pairs (prefix
    ``slices_``) of ``dataset_dir`` when it has them, and add the numbers to ``engine.state.metrics``."""

    def __init__(self, dataset_dir: str | os.PathLike, spec: ModelSpec, generators: Mapping[str, Generator],
                 device: str = "cpu", val_fraction: float = 0.1, seed: int = 0,
                 dataset_card: str | os.PathLike | None = None, enabled: bool = True) -> None:
        self.dataset_dir, self.spec, self.generators = Path(dataset_dir), spec, generators
        self.device, self.val_fraction, self.seed = str(device), val_fraction, seed
        self.dataset_card, self.enabled = dataset_card, enabled
        self.results: dict[str, float] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def compute(self) -> dict[str, float]:
        volumes = held_out_volume_pairs(self.dataset_dir, self.val_fraction, self.seed)
        # 2D pairs are the images a model trained on images reads; a volumes-trained model reads only HU volumes
        images = held_out_image_pairs(self.dataset_dir) if self.spec.layout == "images" else []
        with eval_mode(*[g for g in self.generators.values() if isinstance(g, torch.nn.Module)]):
            results = {f"volume_{k}": v for k, v in evaluate_volume_pairs(
                volumes, self.generators, self.spec, self.device).items()}
            results |= {f"slices_{k}": v for k, v in evaluate_image_pairs(
                images, self.generators, self.spec, self.dataset_dir, self.dataset_card, self.device).items()}
        return results

    def __call__(self, engine: Engine) -> None:
        if not self.enabled:
            return
        self.results = self.compute()
        engine.state.metrics.update(self.results)
        if self.results:
            logger.info("paired metrics: %s", ", ".join(f"{k} {v:.4g}" for k, v in self.results.items()))


