"""CycleGAN engine: one iteration updates all four networks with finite losses; pools and schedules."""

from __future__ import annotations

import itertools

import pytest
import torch

from ctmri_monai.engines import CycleGANEvaluator, CycleGANTrainer
from ctmri_monai.engines.pool import ImagePool
from ctmri_monai.engines.schedule import cyclegan_scheduler
from ctmri_monai.engines.trainer import LOSS_KEYS
from ctmri_monai.losses import AdversarialLoss
from ctmri_monai.networks import define_discriminator, define_generator


def _tiny_trainer(gan_mode: str, batches: list[dict], max_epochs: int = 1, lambda_identity: float = 0.5):
    torch.manual_seed(0)
    gy, gx = (define_generator("resnet", ngf=4, n_blocks=1) for _ in range(2))
    dx, dy = (define_discriminator(ndf=4) for _ in range(2))
    go = torch.optim.Adam(itertools.chain(gy.parameters(), gx.parameters()), 2e-4, betas=(0.5, 0.999))
    do = torch.optim.Adam(itertools.chain(dx.parameters(), dy.parameters()), 2e-4, betas=(0.5, 0.999))
    trainer = CycleGANTrainer("cpu", max_epochs, batches, gy, gx, dx, dy, go, do,
                              adversarial_loss=AdversarialLoss(gan_mode),
                              lambda_identity=lambda_identity)
    return trainer, (gy, gx, dx, dy)


def _batches(n: int = 2, size: int = 32) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    return [{"ct": torch.rand(2, 1, size, size, generator=g) * 2 - 1,
             "mri": torch.rand(2, 1, size, size, generator=g) * 2 - 1} for _ in range(n)]


@pytest.mark.parametrize("gan_mode", ["lsgan", "bce"])
def test_one_iteration_updates_all_networks(gan_mode: str) -> None:
    trainer, nets = _tiny_trainer(gan_mode, _batches(1))
    before = [[p.detach().clone() for p in net.parameters()] for net in nets]
    trainer.run()
    for net, params in zip(nets, before, strict=False):
        changed = any(not torch.equal(a, b) for a, b in zip(net.parameters(), params, strict=False))
        assert changed, f"{type(net).__name__} was not updated"
    out = trainer.state.output
    assert set(out) == set(LOSS_KEYS)
    assert all(torch.isfinite(torch.tensor(v)) for v in out.values())
    assert out["loss_idt"] > 0


def test_identity_loss_can_be_disabled() -> None:
    trainer, _ = _tiny_trainer("lsgan", _batches(1), lambda_identity=0.0)
    trainer.run()
    assert trainer.state.output["loss_idt"] == 0.0
    assert trainer.state.output["loss_G"] == pytest.approx(
        trainer.state.output["loss_G_adv"] + trainer.state.output["loss_cycle"], rel=1e-5)


def test_adversarial_loss_forms() -> None:
    logits = torch.zeros(1, 1, 4, 4)
    assert float(AdversarialLoss("lsgan")(logits, True)) == pytest.approx(1.0)
    assert float(AdversarialLoss("bce")(logits, True)) == pytest.approx(float(torch.log(torch.tensor(2.0))))
    with pytest.raises(ValueError):
        AdversarialLoss("wgan")


def test_image_pool_keeps_history_and_round_trips() -> None:
    pool = ImagePool(3, seed=0)
    for i in range(10):
        out = pool.query(torch.full((2, 1, 2, 2), float(i)))
        assert out.shape == (2, 1, 2, 2)
    assert len(pool.images) == 3
    restored = ImagePool(0)
    restored.load_state_dict(pool.state_dict())
    assert restored.pool_size == 3
    assert all(torch.equal(a, b) for a, b in zip(pool.images, restored.images, strict=True))


def test_schedule_constant_then_linear_to_zero() -> None:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = cyclegan_scheduler(opt, n_epochs=2, n_epochs_decay=2, epoch_length=3)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:6] == [1.0] * 6
    assert lrs[-1] == 0.0
    assert all(a > b for a, b in zip(lrs[5:], lrs[6:], strict=False))


def test_evaluator_outputs_translations_and_masks() -> None:
    gy, gx = (define_generator("resnet", ngf=4, n_blocks=1) for _ in range(2))
    batch = _batches(1)[0] | {"ct_valid": torch.tensor([True, False]), "mri_valid": torch.tensor([True, True])}
    evaluator = CycleGANEvaluator("cpu", [batch], gy, gx)
    evaluator.run()
    out = evaluator.state.output
    assert out["fake_mri"].shape == batch["ct"].shape and out["fake_ct"].shape == batch["mri"].shape
    assert out["ct_valid"].tolist() == [True, False]
    assert gy.training, "evaluation must restore training mode"
