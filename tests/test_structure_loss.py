"""Tests of the MIND structure-preserving loss (ctmri_monai.losses.MINDLoss)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from scipy.ndimage import gaussian_filter

from ctmri_monai.losses import MINDLoss, mind_descriptor
from ctmri_monai.phantoms import make_subject

SLICES = (8, 12, 16)


def _unit(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (np.clip((v - lo) / (hi - lo), 0.0, 1.0) * 2.0 - 1.0).astype(np.float32)


@pytest.fixture(scope="module")
def pair() -> tuple[torch.Tensor, torch.Tensor]:
    """(CT, MRI) axial slices of one phantom, (3, 1, 64, 64) in [-1, 1] (CT brain window: level 40, width 120)."""
    p = make_subject(0, shape=(64, 64, 24), spacing=(3.0, 3.0, 4.0))
    ct = _unit(p.ct.astype(np.float32), -20.0, 100.0)
    mri = _unit(p.mri, 0.0, float(np.percentile(p.mri, 99.5)))
    return tuple(torch.from_numpy(np.stack([v[:, :, z] for z in SLICES])[:, None].copy()) for v in (ct, mri))


def _blur(x: torch.Tensor, sigma: float = 2.0) -> torch.Tensor:
    return torch.from_numpy(gaussian_filter(x.numpy(), (0, 0, sigma, sigma)))


def test_zero_for_itself_and_affine_copies(pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Patch distances read only squared intensity differences, so x -> x + b and x -> -x + b leave every
    descriptor unchanged: the loss is 0 for the image itself, a shifted copy and a contrast-inverted copy."""
    _, mri = pair
    loss = MINDLoss()
    for copy in (mri, mri + 0.3, -mri, 0.2 - mri):
        assert float(loss(copy, mri)) < 1e-6


def test_zero_for_non_monotonic_remap_of_layers() -> None:
    """A skull-like ring bright between darker tissues (CT) against the same ring dark between brighter ones (T1):
    no monotonic map relates them, but each interface keeps its contrast magnitude, so every patch (two tissues
    within the descriptor's reach, the ring being thicker than twice that) has the same descriptor."""
    yy, xx = np.mgrid[:64, :64]
    r = np.hypot(yy - 30.0, xx - 34.0)
    regions = np.where(r < 10, 0, np.where(r < 24, 1, 2))

    def render(values: tuple[float, float, float]) -> torch.Tensor:
        img = gaussian_filter(np.asarray(values, dtype=np.float64)[regions], 0.7)
        return torch.from_numpy(img.astype(np.float32))[None, None]

    bright_bone = render((0.2, 0.9, 0.3))  # |0.2 - 0.9| = 0.7, |0.9 - 0.3| = 0.6
    dark_bone = render((0.1, -0.6, 0.0))  # |0.1 + 0.6| = 0.7, |-0.6 - 0.0| = 0.6
    loss = MINDLoss()
    assert float(loss(dark_bone, bright_bone)) < 1e-5
    assert float(loss(dark_bone.flip(-1), bright_bone)) > 0.02  # the ring is off-centre: flipping moves it


def test_grows_when_structure_is_removed(pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Flipped (left-right) and blurred (sigma 2 px) outputs lose the input's structure; the inverted copy keeps it;
    the real CT of the same slices (other modality, same anatomy) lies clearly below the degraded CTs."""
    ct, mri = pair
    loss = MINDLoss()
    inverted = float(loss(-mri, mri))
    flipped, blurred = float(loss(mri.flip(-1), mri)), float(loss(_blur(mri), mri))
    assert flipped > inverted + 0.05 and blurred > inverted + 0.05
    real = float(loss(ct, mri))
    assert float(loss(ct.flip(-1), mri)) > 1.25 * real
    assert float(loss(_blur(ct), mri)) > 1.25 * real


def test_centre_channel_of_a_context_stack(pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    """A 2.5D source of 2k + 1 slices counts through its centre slice; other channel layouts are refused."""
    ct, mri = pair
    loss = MINDLoss()
    stack = torch.cat([mri.roll(3, -1), mri, mri.roll(-3, -2)], dim=1)
    assert torch.equal(loss(ct, stack), loss(ct, mri))
    with pytest.raises(ValueError, match="channels"):
        loss(ct, stack[:, :2])
    with pytest.raises(ValueError, match="shapes differ"):
        loss(ct[:, :, :32], mri)


def test_channels_last_and_descriptor_range(pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    ct, mri = pair
    loss = MINDLoss()
    cl = torch.cat([mri, mri, mri], 1).contiguous(memory_format=torch.channels_last)
    assert torch.allclose(loss(ct.contiguous(memory_format=torch.channels_last), cl), loss(ct, mri), atol=1e-6)
    d = mind_descriptor(mri)
    assert d.shape == (3, 8, 64, 64) and d.dtype == torch.float32
    assert float(d.min()) > 0 and torch.allclose(d.amax(dim=1), torch.ones(3, 64, 64))


def test_finite_gradient_under_bf16_autocast(pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    """A bf16 generator output under CPU autocast: float32 loss, finite non-zero gradients back to the input."""
    ct, mri = pair
    conv = torch.nn.Conv2d(1, 1, 3, padding=1)
    x = ct.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        translated = torch.tanh(conv(x))
        assert translated.dtype == torch.bfloat16
        value = MINDLoss()(translated, mri.to(torch.bfloat16))
    assert value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    for grad in (x.grad, conv.weight.grad):
        assert grad is not None and torch.isfinite(grad).all() and float(grad.abs().sum()) > 0
    flat = torch.full_like(mri, -1.0, requires_grad=True)  # a constant output: no 0 / 0 anywhere
    MINDLoss()(flat, mri).backward()
    assert torch.isfinite(flat.grad).all()


def test_built_from_a_config() -> None:
    parser = ConfigParser({"structure": {"_target_": "ctmri_monai.losses.MINDLoss", "eps": 0.1, "sigma": 1.0}})
    loss = parser.get_parsed_content("structure")
    assert isinstance(loss, MINDLoss) and loss.eps == 0.1 and loss.sigma == 1.0
    image = torch.rand(2, 1, 16, 16) * 2 - 1
    assert float(loss(image, image)) == 0.0


def test_rejects_bad_settings() -> None:
    for kwargs in ({"neighbourhood": 6}, {"dilation": 0}, {"sigma": 0.0}, {"eps": -1.0}):
        with pytest.raises(ValueError):
            MINDLoss(**kwargs)
