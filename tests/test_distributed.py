"""Multi-process training on the CPU with gloo: DDP engine math, FID gathering, and the torchrun bundle overlay."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import REPO, TINY_OVERRIDES, bundle_cmd
from ignite.engine import Events

from ctmri_monai.engines import CycleGANTrainer
from ctmri_monai.engines.pool import ImagePool
from ctmri_monai.handlers import SampleGridHandler
from ctmri_monai.handlers.replica import ReplicaSyncCheck, rank_handlers
from ctmri_monai.io.checkpoint_file import load_checkpoint
from ctmri_monai.metrics import RandomFeatures
from ctmri_monai.metrics.ignite_metrics import TranslationFeatures
from ctmri_monai.networks import define_discriminator, define_generator
from ctmri_monai.networks.loading import load_generator
from ctmri_monai.utils.distributed import free_port, shard_inputs, unwrap, wrap_ddp
from ctmri_monai.utils.hashing import state_dict_sha256

NETWORK_KEYS = ("generator_ct2mri", "generator_mri2ct", "discriminator_ct", "discriminator_mri")


def test_shard_inputs_splits_disjointly_and_evenly() -> None:
    files = [f"vol{i:02d}.nii.gz" for i in range(11)]
    shards = [shard_inputs(files, r, 4) for r in range(4)]
    assert sorted(sum(shards, [])) == files
    assert [len(s) for s in shards] == [3, 3, 3, 2]
    assert shards[1] == ["vol01.nii.gz", "vol05.nii.gz", "vol09.nii.gz"]
    assert shard_inputs(files) == files  # no process group, no torchrun: one rank holds everything
    assert shard_inputs(files[:1], 3, 4) == []
    with pytest.raises(ValueError, match="rank"):
        shard_inputs(files, 4, 4)


def test_single_process_helpers_leave_modules_alone() -> None:
    net = define_generator("resnet", ngf=4, n_blocks=1)
    assert wrap_ddp(net, "cpu") is net and unwrap(net) is net
    writer = SampleGridHandler("/nonexistent", {}, net, net)
    others = [object(), ReplicaSyncCheck({"g": net})]
    assert rank_handlers([writer, *others], rank=0) == [writer, *others]
    assert rank_handlers([writer, *others], rank=1) == others


def _tiny_nets() -> list[torch.nn.Module]:
    torch.manual_seed(0)
    return [define_generator("resnet", ngf=4, n_blocks=1) for _ in range(2)] + [
        define_discriminator(ndf=4) for _ in range(2)]


def _global_batches(n: int = 3, size: int = 32) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    return [{"ct": torch.rand(2, 1, size, size, generator=g) * 2 - 1,
             "mri": torch.rand(2, 1, size, size, generator=g) * 2 - 1} for _ in range(n)]


def _trainer(nets: list[torch.nn.Module], batches: list[dict], lr: float, wrap: bool) -> CycleGANTrainer:
    gy, gx, dx, dy = nets
    go = torch.optim.SGD([*gy.parameters(), *gx.parameters()], lr=lr)
    do = torch.optim.SGD([*dx.parameters(), *dy.parameters()], lr=lr)
    wrapped = [wrap_ddp(n, "cpu") for n in nets] if wrap else nets
    return CycleGANTrainer("cpu", 1, batches, *wrapped, go, do, pool_ct=ImagePool(0), pool_mri=ImagePool(0))


def _grads(nets: list[torch.nn.Module]) -> list[list[torch.Tensor]]:
    return [[p.grad.detach().clone() for p in n.parameters()] for n in nets]


def _features(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    feats = TranslationFeatures(RandomFeatures())
    feats.update((images, images.flip(-1)))
    return feats.compute()


def _worker(rank: int, world: int, port: int, out: str) -> None:
    """Train 3 iterations with DDP on this rank's half of each global batch of two; at every iteration compare the
    synchronised gradients with one process's gradients of the whole batch at the same weights."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        nets, whole = _tiny_nets(), _global_batches()
        trainer = _trainer(nets, [{k: v[rank:rank + 1] for k, v in b.items()} for b in whole], 0.005, wrap=True)
        expected, gaps = [], []

        def reference(engine: CycleGANTrainer) -> None:
            copies = copy.deepcopy(nets)
            _trainer(copies, [whole[engine.state.iteration - 1]], 0.0, wrap=False).run()
            expected.append(_grads(copies))

        def compare(engine: CycleGANTrainer) -> None:
            gaps.append([max(float((a - b).abs().max()) for a, b in zip(mine, ref, strict=True))
                         for mine, ref in zip(_grads(nets), expected[-1], strict=True)])

        trainer.add_event_handler(Events.ITERATION_STARTED, reference)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, compare)
        trainer.run()
        # FID features: each rank holds 3 of 6 images; compute() must gather all 6 from both ranks
        images = torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1
        fake, real = _features(images[rank * 3:(rank + 1) * 3])
        torch.save({"states": [n.state_dict() for n in nets], "gaps": gaps, "fake": fake, "real": real},
                   os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_training_equals_one_process_on_the_whole_batch_and_features_gather(tmp_path: Path) -> None:
    """Two gloo ranks on half batches step like one process on whole batches; FID features are gathered."""
    mp.start_processes(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    initial = [n.state_dict() for n in _tiny_nets()]
    for i in range(4):
        state0, state1 = ranks[0]["states"][i], ranks[1]["states"][i]
        assert state_dict_sha256(state0) == state_dict_sha256(state1), f"network {i} differs across ranks"
        assert any(not torch.equal(state0[k], initial[i][k]) for k in state0), f"network {i} was not trained"
    gaps = torch.tensor(ranks[0]["gaps"])  # iterations x networks; gradients are O(1..10)
    assert gaps.shape == (3, 4) and float(gaps.max()) < 1e-3, gaps
    whole_fake, whole_real = _features(torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1)
    for r in ranks:
        assert r["fake"].shape == (6, whole_fake.shape[1])
        torch.testing.assert_close(r["fake"], whole_fake)
        torch.testing.assert_close(r["real"], whole_real)


def test_torchrun_bundle_overlay_two_gloo_ranks(tiny_phantoms: Path, tmp_path: Path) -> None:
    """train.yaml + multi_gpu_train.yaml under torchrun, 2 CPU processes, 2 epochs: identical replicas, rank-0
    checkpoints in the single-GPU layout, rank-0 logs, validation FID from both ranks."""
    out, fingerprints = tmp_path / "run", tmp_path / "fingerprints"
    overrides = {**TINY_OVERRIDES, "batch_size": 4, "backend": "gloo", "replica_check_dir": fingerprints,
                 "dataset_dir": tiny_phantoms, "output_dir": out, "n_epochs": 1, "n_epochs_decay": 1,
                 "val_interval": 2}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
           *bundle_cmd(["train", "multi_gpu_train"], **overrides)[1:]]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=180,
                            env=env, cwd=REPO)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]

    prints = [json.loads((fingerprints / f"replica_fingerprints_rank{r}.json").read_text()) for r in range(2)]
    assert prints[0]["epoch"] == prints[1]["epoch"] == 2
    final = load_checkpoint(out / "checkpoints" / "final.pt")
    for key in NETWORK_KEYS:
        assert prints[0][key] == prints[1][key], f"{key} differs across ranks"
        assert state_dict_sha256(final[key]) == prints[0][key], f"final.pt {key} is not what rank 0 holds"
        assert not any(name.startswith("module.") for name in final[key])
    # every rank trained on its half of the slices: half the single-process iterations per epoch
    from ctmri_monai.data import build_unpaired_dataset, spec_for_dataset

    n_items = len(build_unpaired_dataset(tiny_phantoms, spec_for_dataset(tiny_phantoms, image_size=32), "train"))
    assert final["trainer"]["epoch_length"] == (n_items + 1) // 2 // 4
    assert final["trainer"]["iteration"] == 2 * final["trainer"]["epoch_length"]
    load_generator(out / "checkpoints" / "final.pt", "ct2mri")  # the single-GPU loader takes it as is
    assert (out / "checkpoints" / "best.pt").is_file() and (out / "samples" / "samples_latest.png").is_file()
    assert log.count("Epoch: 1/2, Iter: 1/") == 1, "iteration logs must come from rank 0 only"
    assert log.count("Key metric: fid_mean best value") == 1
