"""Speed options keep a tiny CycleGAN's results: channels_last, AMP (a no-op on CPU), torch.compile, cuDNN flags."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS
from ignite.engine import Events
from monai.bundle import ConfigParser

from ctmri_monai.engines import CycleGANTrainer
from ctmri_monai.networks import define_discriminator, define_generator
from ctmri_monai.utils.amp import autocast, autocast_dtype, grad_scaler
from ctmri_monai.utils.speed import configure_backends, maybe_compile


def is_compiled(net: torch.nn.Module) -> bool:
    """Whether ``net``'s forward was compiled in place (``nn.Module.compile``)."""
    return getattr(net, "_compiled_call_impl", None) is not None


def _nets() -> list[torch.nn.Module]:
    torch.manual_seed(0)
    return [define_generator("resnet", ngf=4, n_blocks=1) for _ in range(2)] + [
        define_discriminator(ndf=4) for _ in range(2)]


def _batches(n: int = 2) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [{"ct": torch.rand(2, 1, 32, 32, generator=g) * 2 - 1,
             "mri": torch.rand(2, 1, 32, 32, generator=g) * 2 - 1} for _ in range(n)]


def _train(nets: list[torch.nn.Module] | None = None, **kwargs: object) -> tuple[list[dict], torch.Tensor]:
    """Two iterations; returns the per-iteration losses and G_ct2mri's output on a fixed batch afterwards."""
    gy, gx, dx, dy = nets = nets or _nets()
    go = torch.optim.Adam(itertools.chain(gy.parameters(), gx.parameters()), 2e-4, betas=(0.5, 0.999))
    do = torch.optim.Adam(itertools.chain(dx.parameters(), dy.parameters()), 2e-4, betas=(0.5, 0.999))
    batches = _batches()
    trainer = CycleGANTrainer("cpu", 1, batches, gy, gx, dx, dy, go, do, **kwargs)
    losses: list[dict] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(dict(e.state.output)))
    trainer.run()
    with torch.no_grad():
        return losses, gy(batches[0]["ct"]).contiguous()


def _assert_same_training(a: tuple[list[dict], torch.Tensor], b: tuple[list[dict], torch.Tensor],
                          atol: float) -> None:
    for la, lb in zip(a[0], b[0], strict=True):
        assert la.keys() == lb.keys()
        for key in la:
            assert la[key] == pytest.approx(lb[key], rel=1e-5, abs=atol), key
    torch.testing.assert_close(a[1], b[1], rtol=0.0, atol=atol)


def test_amp_is_a_no_op_on_cpu() -> None:
    assert autocast_dtype("cpu", True) is None and grad_scaler(None) is None
    x = torch.ones(2, 2)
    with autocast("cpu", autocast_dtype("cpu", True)):
        assert (x @ x).dtype == torch.float32
    _assert_same_training(_train(amp=True), _train(amp=False), atol=0.0)


def test_bf16_autocast_path_stays_within_mixed_precision_tolerance() -> None:
    """The trainer's autocast path (bf16, as on CUDA) run on the CPU, where autocast supports bf16 too: losses and
    the trained generator stay within bf16 tolerance of fp32."""
    gy, gx, dx, dy = _nets()
    go = torch.optim.Adam(itertools.chain(gy.parameters(), gx.parameters()), 2e-4, betas=(0.5, 0.999))
    do = torch.optim.Adam(itertools.chain(dx.parameters(), dy.parameters()), 2e-4, betas=(0.5, 0.999))
    batches = _batches()
    trainer = CycleGANTrainer("cpu", 1, batches, gy, gx, dx, dy, go, do)
    trainer.amp_dtype = torch.bfloat16  # what autocast_dtype picks on a bf16-capable GPU
    seen: list[torch.dtype] = []
    gy.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    losses: list[dict] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(dict(e.state.output)))
    trainer.run()
    assert torch.bfloat16 in seen, "the generator did not run under bf16 autocast"
    with torch.no_grad():
        bf16 = losses, gy(batches[0]["ct"]).contiguous()
    reference = _train()
    for la, lb in zip(bf16[0], reference[0], strict=True):
        for key in la:
            assert la[key] == pytest.approx(lb[key], rel=0.05, abs=0.02), key
    torch.testing.assert_close(bf16[1], reference[1], rtol=0.0, atol=0.05)


def test_channels_last_matches_fp32_nchw() -> None:
    plain = _train()
    nets = _nets()
    nhwc = _train(nets, channels_last=True)
    assert nets[0].model[1].weight.is_contiguous(memory_format=torch.channels_last)
    _assert_same_training(nhwc, plain, atol=1e-5)


def test_compile_keeps_module_keys_and_results() -> None:
    """``maybe_compile`` compiles in place: same object and state_dict keys, same training. The ``aot_eager``
    backend runs TorchDynamo and AOTAutograd (the whole compile path but code generation) in seconds; Inductor
    code generation takes over a minute on a 2-core CPU, see the opt-in test below."""
    nets = _nets()
    keys = [list(n.state_dict()) for n in nets]
    assert maybe_compile(nets[0], enabled=False) is nets[0] and not is_compiled(nets[0])
    for net in nets:
        assert maybe_compile(net, True, backend="aot_eager") is net and is_compiled(net)
    assert [list(n.state_dict()) for n in nets] == keys
    assert not any(k.startswith("_orig_mod") for k in keys[0])
    nets[0].load_state_dict(_nets()[0].state_dict())  # checkpoints of plain modules load as they are
    try:
        _assert_same_training(_train(nets), _train(), atol=1e-5)
    finally:
        torch._dynamo.reset()


@pytest.mark.skipif(os.environ.get("CTMRI_SLOW_TESTS") != "1",
                    reason="Inductor compiles C++ kernels: over a minute on a 2-core CPU; set CTMRI_SLOW_TESTS=1")
def test_inductor_compile_matches_eager() -> None:
    nets = [maybe_compile(n, True) for n in _nets()]
    try:
        _assert_same_training(_train(nets), _train(), atol=1e-4)
    finally:
        torch._dynamo.reset()


def test_configure_backends_sets_cudnn_only_for_cuda() -> None:
    saved = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    try:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True  # as set_determinism leaves
        assert configure_backends("cpu", True) == {"device": "cpu", "cudnn_benchmark": False,
                                                   "cudnn_deterministic": True}
        flags = configure_backends(torch.device("cuda"), True)  # only sets flags: needs no GPU
        assert flags["cudnn_benchmark"] and not flags["cudnn_deterministic"]
        assert not configure_backends("cuda", False)["cudnn_benchmark"]
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved


def test_train_yaml_speed_keys(tiny_phantoms: Path) -> None:
    """train.yaml's speed keys, resolved by MONAI's ConfigParser: channels_last on CUDA only, cuDNN flags in
    ``initialize``, and ``compile`` compiling the networks in place (built from the contract of a dataset)."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.yaml"))
    parser.update({"device": "$torch.device('cpu')", "compile": True, "compile_kwargs": {"backend": "eager"},
                   "ngf": 4, "n_blocks": 1, "dataset_dir": str(tiny_phantoms)})
    parser.parse()
    parser.get_parsed_content("imports")
    try:
        net = parser.get_parsed_content("generator_ct2mri")
        assert is_compiled(net) and net is parser.get_parsed_content("generator_ct2mri_def")
        assert is_compiled(parser.get_parsed_content("discriminator_mri"))
        assert parser.get_parsed_content("channels_last") is False
        assert parser.get_parsed_content("initialize")[-1]["device"] == "cpu"
        assert net(torch.zeros(1, 1, 32, 32)).shape == (1, 1, 32, 32)
        parser.update({"device": "$torch.device('cuda')"})
        parser.parse()
        assert parser.get_parsed_content("channels_last") is True  # resolving it needs no GPU
    finally:
        torch._dynamo.reset()
