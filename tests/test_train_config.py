"""train.yaml declares each fact once (issue 18): the dataset card is parsed once, the generators' architecture and
the context come from the contract (``model_spec``), not from a second copy of the settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import CONFIGS
from monai.bundle import ConfigParser

import ctmri_monai.data.card as card_module


def _parser(dataset_dir: Path, **overrides: object) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.yaml"))
    settings = {"dataset_dir": str(dataset_dir), "output_dir": "/tmp/unused", "device": "cpu", "num_workers": 0,
                "ngf": 4, "ndf": 4, "n_blocks": 1, "image_size": 32, "pixdim": [6.0, 6.0], **overrides}
    for key, value in settings.items():
        parser[key] = value
    return parser


def test_the_dataset_card_is_parsed_once(tiny_phantoms: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The contract, both transform sets and the datasets all use the one parsed card (before: read by
    spec_for_dataset and again by each dataset_transforms)."""
    reads: list[Path] = []
    real = card_module.read_card
    monkeypatch.setattr(card_module, "read_card", lambda path: reads.append(Path(path)) or real(path))
    parser = _parser(tiny_phantoms)
    for key in ("model_spec", "transforms#train", "transforms#eval", "train#dataset", "validate#dataset"):
        parser.get_parsed_content(key)
    assert reads == [tiny_phantoms / "dataset.json"]
    spec = parser.get_parsed_content("model_spec")
    assert spec.ct.window == (-20.0, 100.0)  # the card was used: the phantoms' PNG export window


@pytest.mark.parametrize("backbone, context", [("resnet", 1), ("unet", 0)])
def test_generators_are_built_from_the_contract(tiny_phantoms: Path, backbone: str, context: int) -> None:
    parser = _parser(tiny_phantoms, layout="volumes", backbone=backbone, num_downs=5, context_slices=context)
    spec = parser.get_parsed_content("model_spec")
    g1, g2 = (parser.get_parsed_content(k) for k in ("generator_ct2mri_def", "generator_mri2ct_def"))
    assert g1 is not g2 and type(g1).__name__.lower().startswith(backbone)
    first = next(m for m in g1.modules() if hasattr(m, "in_channels"))
    assert first.in_channels == spec.network.in_channels == 2 * context + 1 and spec.network.ngf == 4
    for key in ("train#trainer", "validate#evaluator"):
        assert parser.get_parsed_content(key).context_slices == context, key
    text = (CONFIGS / "train.yaml").read_text()
    assert text.count("@context_slices") == 1 and text.count('"@ngf"') == 1  # the contract's inputs only


def test_a_training_set_smaller_than_one_batch_is_refused() -> None:
    """With drop_last, 3 samples and batch_size 8 give no batch: before, the run ended at once with exit status 0
    and no checkpoint; negative control: batch_size 2 trains."""
    import torch
    from monai.data import DataLoader

    from ctmri_monai.engines import CycleGANTrainer
    from ctmri_monai.io.errors import InputError
    from ctmri_monai.networks import define_discriminator, define_generator

    data = [{"ct": torch.zeros(1, 32, 32), "mri": torch.zeros(1, 32, 32)}] * 3
    nets = [define_generator(ngf=4, n_blocks=1) for _ in range(2)] + [define_discriminator(ndf=4) for _ in range(2)]
    opt = [torch.optim.Adam(nets[0].parameters()), torch.optim.Adam(nets[2].parameters())]
    with pytest.raises(InputError, match=r"no batch per epoch \(3 samples, batch_size 8"):
        CycleGANTrainer("cpu", 1, DataLoader(data, batch_size=8, drop_last=True), *nets, *opt)
    trainer = CycleGANTrainer("cpu", 1, DataLoader(data, batch_size=2, drop_last=True), *nets, *opt)
    trainer.run()
    assert trainer.state.iteration == 1
