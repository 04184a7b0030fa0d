"""The CycleGAN trainer on MONAI's Ignite workflow.

``CycleGANTrainer`` runs one CycleGAN iteration per batch of unpaired CT/MRI slices (or 2.5D slice stacks): a
generator step (adversarial loss both ways + lambda_cycle * cycle L1 + lambda_cycle * lambda_identity * identity L1
[+ lambda_structure * structure loss]), then a discriminator step on image-history pools with the loss halved.
It fires MONAI's ``IterationEvents`` so MONAI handlers (checkpoints, stats, TensorBoard, validation, LR
schedules) attach as to any MONAI trainer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.engines import Trainer
from monai.engines.utils import IterationEvents
from monai.engines.workflow import Workflow
from monai.inferers import Inferer, SimpleInferer
from torch import nn
from torch.optim import Optimizer

from ctmri_monai.engines.cycle import cycle
from ctmri_monai.engines.pool import ImagePool
from ctmri_monai.io.errors import InputError
from ctmri_monai.losses import AdversarialLoss
from ctmri_monai.transforms.context import centre_slice, centre_window
from ctmri_monai.utils.amp import autocast, autocast_dtype, grad_scaler
from ctmri_monai.utils.distributed import unwrap

LOSS_KEYS = ("loss_G", "loss_G_adv", "loss_cycle", "loss_idt", "loss_structure", "loss_D_ct", "loss_D_mri")


def to_device(batch: dict, device: torch.device, non_blocking: bool, channels_last: bool) -> dict:
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=non_blocking)
            if channels_last and value.ndim == 4:
                value = value.contiguous(memory_format=torch.channels_last)
        out[key] = value
    return out


def as_plain(x: torch.Tensor) -> torch.Tensor:
    """Drop MONAI metadata so networks see plain tensors (faster, and safe under autocast)."""
    return x.as_tensor() if hasattr(x, "as_tensor") else x


def _require_batches(loader: Any, epoch_length: int | None) -> None:
    """Refuse a loader that gives no batch per epoch (fewer samples than ``batch_size`` with ``drop_last``): the
    run would end at once with exit status 0, no iteration and no checkpoint."""
    n = epoch_length if epoch_length is not None else (len(loader) if hasattr(loader, "__len__") else None)
    if n == 0:
        samples = len(loader.dataset) if hasattr(getattr(loader, "dataset", None), "__len__") else "?"
        raise InputError("training data", f"no batch per epoch ({samples} samples, batch_size "
                                          f"{getattr(loader, 'batch_size', '?')}, the last incomplete batch "
                                          "dropped): lower batch_size, raise slices_per_volume or add data")


class CycleGANTrainer(Trainer):
    """Ignite/MONAI trainer of the two CycleGAN generators and two discriminators.

    Args:
        device: where networks and batches live.
        max_epochs: epochs to train (``n_epochs + n_epochs_decay`` in the paper's schedule).
        train_data_loader: yields dicts with "ct" and "mri" tensors (N, C, H, W) in [-1, 1].
        generator_ct2mri: G_Y, CT -> MRI.
        generator_mri2ct: G_X, MRI -> CT.
        discriminator_ct: D_X, is it CT? Returns patch logits.
        discriminator_mri: D_Y, is it MRI? Returns patch logits.
        g_optimizer: one optimiser over both generators.
        d_optimizer: one optimiser over both discriminators.
        adversarial_loss: loss of a patch-logit map against real (True) or fake (False), as
            ``loss(logits, target_is_real)`` (default `AdversarialLoss("lsgan")`, the reference's least squares).
        cycle_loss: reconstruction loss ``loss(reconstructed, real)`` (default L1).
        identity_loss: identity loss ``loss(generator(target-domain image), that image)`` (default L1).
        structure_loss: optional ``loss(translated, source)`` tying each translation's structure to its input's.
        lambda_cycle: weight of the cycle-consistency loss.
        lambda_identity: identity loss weight, relative to ``lambda_cycle`` (0 disables it).
        lambda_structure: weight of ``structure_loss`` (0 disables it: the paper's method).
        context_slices: k; batches hold stacks of 4k + 1 axial slices, generators read 2k + 1 and write the middle
            one, discriminators judge single slices (`ctmri_monai.engines.cycle`). 0: plain 2D slices.
        pool_ct, pool_mri: image-history pools of generated images (size 50 by default).
        amp: mixed precision on CUDA (bf16, or fp16 with a grad scaler); ignored on CPU.
        channels_last: NHWC memory layout for faster convolutions on GPUs.
        The four networks may be ``DistributedDataParallel`` wrappers (multi-GPU overlay): every generator and
        discriminator forward that needs gradients then feeds one backward, as DDP requires.
        train_handlers: MONAI/Ignite handlers to attach.
        inferer: how generators are called on a batch (MONAI ``SimpleInferer`` by default).
    """

    def __init__(self, device: str | torch.device, max_epochs: int, train_data_loader: Any,
                 generator_ct2mri: nn.Module, generator_mri2ct: nn.Module, discriminator_ct: nn.Module,
                 discriminator_mri: nn.Module, g_optimizer: Optimizer, d_optimizer: Optimizer,
                 adversarial_loss: nn.Module | None = None, cycle_loss: nn.Module | None = None,
                 identity_loss: nn.Module | None = None, structure_loss: nn.Module | None = None,
                 lambda_cycle: float = 10.0, lambda_identity: float = 0.5, lambda_structure: float = 0.0,
                 context_slices: int = 0,
                 pool_ct: ImagePool | None = None, pool_mri: ImagePool | None = None, epoch_length: int | None = None,
                 non_blocking: bool = False, amp: bool = False, channels_last: bool = False,
                 train_handlers: Sequence | None = None, iteration_update: Callable | None = None,
                 inferer: Inferer | None = None) -> None:
        _require_batches(train_data_loader, epoch_length)
        self.inferer = inferer if inferer is not None else SimpleInferer()
        self.generator_ct2mri, self.generator_mri2ct = generator_ct2mri, generator_mri2ct
        self.discriminator_ct, self.discriminator_mri = discriminator_ct, discriminator_mri
        self.g_optimizer, self.d_optimizer = g_optimizer, d_optimizer
        self.adversarial = adversarial_loss if adversarial_loss is not None else AdversarialLoss("lsgan")
        self.cycle_loss = cycle_loss if cycle_loss is not None else nn.L1Loss()
        self.identity_loss = identity_loss if identity_loss is not None else nn.L1Loss()
        self.structure_loss = structure_loss
        self.lambda_cycle, self.lambda_identity = float(lambda_cycle), float(lambda_identity)
        self.lambda_structure = float(lambda_structure) if structure_loss is not None else 0.0
        self.context_slices = int(context_slices)
        self.pool_ct = pool_ct if pool_ct is not None else ImagePool(50)
        self.pool_mri = pool_mri if pool_mri is not None else ImagePool(50)
        self.channels_last = channels_last
        self.amp_dtype = autocast_dtype(device, amp)
        super().__init__(device=device, max_epochs=max_epochs, data_loader=train_data_loader,
                         epoch_length=epoch_length, non_blocking=non_blocking, iteration_update=iteration_update,
                         handlers=train_handlers, amp=False, decollate=False)
        if channels_last:
            for net in self.networks():
                net.to(memory_format=torch.channels_last)

    def networks(self) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
        return self.generator_ct2mri, self.generator_mri2ct, self.discriminator_ct, self.discriminator_mri

    def run(self) -> None:  # type: ignore[override]
        """Train; a CUDA fp16 run gets a grad scaler (MONAI's ``Trainer.run`` would create one on CPU too)."""
        self.scaler = grad_scaler(self.amp_dtype)
        Workflow.run(self)

    def _backward_step(self, loss: torch.Tensor, optimizer: Optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
        else:
            loss.backward()
            optimizer.step()

    @staticmethod
    def _set_requires_grad(nets: Sequence[nn.Module], flag: bool) -> None:
        for net in nets:
            for p in net.parameters():
                p.requires_grad_(flag)

    def _generator_losses(self, stack_ct: torch.Tensor, stack_mri: torch.Tensor) -> dict[str, torch.Tensor]:
        k = self.context_slices
        fake_mri, rec_ct = cycle(self.generator_ct2mri, self.generator_mri2ct, stack_ct, k, self.inferer)
        fake_ct, rec_mri = cycle(self.generator_mri2ct, self.generator_ct2mri, stack_mri, k, self.inferer)
        real_ct, real_mri = centre_slice(stack_ct), centre_slice(stack_mri)
        # The discriminators are frozen here: call them outside DDP, whose reducer would wait for their gradients.
        adv = self.adversarial(unwrap(self.discriminator_mri)(fake_mri), True) + self.adversarial(
            unwrap(self.discriminator_ct)(fake_ct), True)
        cycled = self.cycle_loss(rec_ct.float(), real_ct.float()) + self.cycle_loss(rec_mri.float(), real_mri.float())
        total = adv + cycled * self.lambda_cycle
        zero = torch.zeros((), device=stack_ct.device)
        idt = structure = zero
        if self.lambda_identity > 0:
            same_mri = self.inferer(centre_window(stack_mri, k), self.generator_ct2mri)
            same_ct = self.inferer(centre_window(stack_ct, k), self.generator_mri2ct)
            idt = self.identity_loss(same_mri.float(), real_mri.float()) + self.identity_loss(same_ct.float(),
                                                                                              real_ct.float())
            idt = idt * self.lambda_cycle * self.lambda_identity
        if self.lambda_structure > 0:
            structure = self.structure_loss(fake_mri, real_ct) + self.structure_loss(fake_ct, real_mri)
            structure = structure * self.lambda_structure
        return {"loss_G": total + idt + structure, "loss_G_adv": adv, "loss_cycle": cycled * self.lambda_cycle,
                "loss_idt": idt, "loss_structure": structure, "fake_ct": fake_ct, "fake_mri": fake_mri,
                "real_ct": real_ct, "real_mri": real_mri}

    def _discriminator_loss(self, net: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.adversarial(net(real), True) + self.adversarial(net(fake.detach()), False))

    def _iteration(self, engine: CycleGANTrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        if batchdata is None:
            raise ValueError("must provide batch data for current iteration.")
        batch = to_device(batchdata, engine.state.device, engine.non_blocking, self.channels_last)
        stack_ct, stack_mri = as_plain(batch["ct"]), as_plain(batch["mri"])
        engine.state.batch = batch
        discriminators = (self.discriminator_ct, self.discriminator_mri)

        self._set_requires_grad(discriminators, False)
        with autocast(engine.state.device, self.amp_dtype):
            g = self._generator_losses(stack_ct, stack_mri)
        real_ct, real_mri = g["real_ct"], g["real_mri"]
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        self._backward_step(g["loss_G"], self.g_optimizer)

        self._set_requires_grad(discriminators, True)
        fake_mri = self.pool_mri.query(g["fake_mri"])
        fake_ct = self.pool_ct.query(g["fake_ct"])
        with autocast(engine.state.device, self.amp_dtype):
            loss_d_mri = self._discriminator_loss(self.discriminator_mri, real_mri, fake_mri)
            loss_d_ct = self._discriminator_loss(self.discriminator_ct, real_ct, fake_ct)
        self._backward_step(loss_d_ct + loss_d_mri, self.d_optimizer)
        if self.scaler is not None:
            self.scaler.update()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)

        losses = [g[k] for k in LOSS_KEYS[:5]] + [loss_d_ct, loss_d_mri]
        values = torch.stack([v.detach().float() for v in losses]).tolist()  # one device-to-host copy
        engine.state.output = dict(zip(LOSS_KEYS, values, strict=True))
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
