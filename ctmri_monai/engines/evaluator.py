"""The CycleGAN evaluator: translates an evaluation set both ways for metrics such as FID."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.engines import Evaluator
from monai.engines.utils import IterationEvents
from monai.inferers import Inferer, SimpleInferer
from monai.networks.utils import eval_mode
from torch import nn

from ctmri_monai.engines.trainer import as_plain, to_device
from ctmri_monai.transforms.context import centre_slice, centre_window
from ctmri_monai.utils.amp import autocast, autocast_dtype

__all__ = ["CycleGANEvaluator", "lower_is_better"]


def lower_is_better(current: float, prev_best: float) -> bool:
    """Key-metric comparison for FID-like metrics (MONAI's default keeps the highest)."""
    return current < prev_best


class CycleGANEvaluator(Evaluator):
    """Translates every item of an evaluation set both ways; metrics read the output dict.

    Output per batch: "real_ct", "real_mri", "fake_ct", "fake_mri" (float32, N x 1 x H x W in [-1, 1]) and
    "ct_valid", "mri_valid" (bool N): the unpaired evaluation set pads the shorter domain, and metrics skip
    the padding items. Fake MRI is valid where the CT was, fake CT where the MRI was. With ``context_slices`` k
    the batches hold slice stacks: the generators read the 2k + 1 middle slices, "real_*" is the middle one.
    """

    def __init__(self, device: str | torch.device, val_data_loader: Any, generator_ct2mri: nn.Module,
                 generator_mri2ct: nn.Module, key_val_metric: dict | None = None,
                 additional_metrics: dict | None = None, metric_cmp_fn: Callable = lower_is_better,
                 val_handlers: Sequence | None = None, amp: bool = False, non_blocking: bool = False,
                 epoch_length: int | None = None, inferer: Inferer | None = None, context_slices: int = 0) -> None:
        self.inferer = inferer if inferer is not None else SimpleInferer()
        self.context_slices = int(context_slices)
        self.generator_ct2mri, self.generator_mri2ct = generator_ct2mri, generator_mri2ct
        self.amp_dtype = autocast_dtype(device, amp)
        super().__init__(device=device, val_data_loader=val_data_loader, epoch_length=epoch_length,
                         non_blocking=non_blocking, key_val_metric=key_val_metric,
                         additional_metrics=additional_metrics, metric_cmp_fn=metric_cmp_fn,
                         val_handlers=val_handlers, amp=False, decollate=False)

    def _iteration(self, engine: CycleGANEvaluator, batchdata: dict[str, torch.Tensor]) -> dict:
        batch = to_device(batchdata, engine.state.device, engine.non_blocking, False)
        stack_ct, stack_mri, k = as_plain(batch["ct"]), as_plain(batch["mri"]), self.context_slices
        engine.state.batch = batch
        with eval_mode(self.generator_ct2mri, self.generator_mri2ct), autocast(engine.state.device, self.amp_dtype):
            fake_mri = self.inferer(centre_window(stack_ct, k), self.generator_ct2mri).float()
            fake_ct = self.inferer(centre_window(stack_mri, k), self.generator_mri2ct).float()
        real_ct, real_mri = centre_slice(stack_ct), centre_slice(stack_mri)
        n = real_ct.shape[0]
        ones = torch.ones(n, dtype=torch.bool, device=real_ct.device)
        engine.state.output = {
            "real_ct": real_ct, "real_mri": real_mri, "fake_ct": fake_ct, "fake_mri": fake_mri,
            "ct_valid": batch.get("ct_valid", ones).bool(), "mri_valid": batch.get("mri_valid", ones).bool(),
        }
        for key in ("ct_path", "mri_path"):
            if key in batch:
                engine.state.output[key] = batch[key]
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
