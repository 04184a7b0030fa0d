"""Ignite handlers for CycleGAN training that MONAI does not have: sample grids and handler attachment."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.networks.utils import eval_mode
from torch import nn
from torch.utils.data import Dataset

from ctmri_monai.engines.cycle import cycle
from ctmri_monai.io.images import image_grid, save_png
from ctmri_monai.transforms.context import centre_slice

logger = logging.getLogger(__name__)


def attach_handlers(engine: Engine, handlers: Sequence[Any]) -> Engine:
    """Attach handlers after the engine exists (lets a checkpoint handler hold the engine it is attached to)."""
    for handler in handlers:
        handler.attach(engine)
    return engine


def fixed_samples(dataset: Dataset, num_samples: int = 4) -> dict[str, torch.Tensor]:
    """The first ``num_samples`` valid CT and MRI slices of an (evaluation) unpaired dataset, stacked."""
    cts, mris = [], []
    for i in range(len(dataset)):  # type: ignore[arg-type]
        item = dataset[i]
        if item.get("ct_valid", True) and len(cts) < num_samples:
            cts.append(torch.as_tensor(item["ct"]))
        if item.get("mri_valid", True) and len(mris) < num_samples:
            mris.append(torch.as_tensor(item["mri"]))
        if len(cts) >= num_samples and len(mris) >= num_samples:
            break
    if not cts or not mris:
        raise ValueError("fixed_samples: the dataset has no CT or no MRI items")
    return {"ct": torch.stack(cts).float(), "mri": torch.stack(mris).float()}


class SampleGridHandler:
    """Every ``interval`` epochs, save a PNG grid: real | translated | reconstructed, for both directions.

    Rows: CT -> synthetic MRI -> reconstructed CT for each CT sample, then MRI -> synthetic CT -> reconstructed
    MRI for each MRI sample, through the trainer's own cycle (`ctmri_monai.engines.cycle`; ``context_slices`` k:
    the samples are stacks of 4k + 1 slices). Files: ``output_dir/samples_epoch_NNNN.png`` and
    ``output_dir/samples_latest.png``.
    """

    def __init__(self, output_dir: str, samples: dict[str, torch.Tensor], generator_ct2mri: nn.Module,
                 generator_mri2ct: nn.Module, interval: int = 1, context_slices: int = 0) -> None:
        self.output_dir = Path(output_dir)
        self.context_slices = int(context_slices)
        self.samples = samples
        self.generator_ct2mri, self.generator_mri2ct = generator_ct2mri, generator_mri2ct
        self.interval = max(1, int(interval))
        self.last_path: Path | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self)

    @torch.no_grad()
    def render(self) -> Any:
        device = next(self.generator_ct2mri.parameters()).device
        ct, mri = self.samples["ct"].to(device), self.samples["mri"].to(device)
        k = self.context_slices
        with eval_mode(self.generator_ct2mri, self.generator_mri2ct):
            fake_mri, rec_ct = cycle(self.generator_ct2mri, self.generator_mri2ct, ct, k)
            fake_ct, rec_mri = cycle(self.generator_mri2ct, self.generator_ct2mri, mri, k)
        ct, mri = centre_slice(ct), centre_slice(mri)
        rows = [[ct[i], fake_mri[i], rec_ct[i]] for i in range(len(ct))]
        rows += [[mri[i], fake_ct[i], rec_mri[i]] for i in range(len(mri))]
        return image_grid(rows)

    def __call__(self, engine: Engine) -> None:
        if getattr(engine.state, "rank", 0) != 0:
            return
        grid = self.render()
        self.last_path = save_png(grid, self.output_dir / f"samples_epoch_{engine.state.epoch:04d}.png")
        save_png(grid, self.output_dir / "samples_latest.png")
        logger.info("sample grid written to %s", self.last_path)
