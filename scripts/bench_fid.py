"""Benchmark FID/KID evaluation: Inception features and Fréchet distance for the paper's test size.

One direction of the paper's evaluation compares 744 translated slices with 744 real ones: 1,488 Inception
forward passes at 299 x 299, then the Fréchet distance of two 2048-d Gaussians and KID. This script times each
part on random 256 x 256 gray slices (the timing does not depend on content) and prints a table; --json writes
the figures. Use --quick for a seconds-long smoke run (CI).

    python scripts/bench_fid.py [--images 744] [--device cpu|cuda] [--batch 32] [--json out.json]
"""

from __future__ import annotations

import argparse
import time

import torch

from ctmri_monai.apps.benchmarking import machine_info, synchronize, write_json
from ctmri_monai.metrics import InceptionFeatures, RandomFeatures, frechet_distance, kernel_inception_distance


def measure(images: int, device: str, batch: int, features: str, size: int) -> dict:
    """Time feature extraction for two sets of ``images`` slices, then FID and KID on them."""
    net = InceptionFeatures(device=device, max_batch=batch) if features == "inception" else RandomFeatures().to(device)
    gen = torch.Generator().manual_seed(0)
    sets = [torch.rand(images, 1, size, size, generator=gen) * 2 - 1 for _ in range(2)]
    net(sets[0][:2])  # warm-up: lazy initialisation, cuDNN autotuning
    synchronize(torch.device(device))
    t0 = time.perf_counter()
    feats = [torch.cat([net(chunk) for chunk in torch.split(s, batch)]).cpu() for s in sets]
    synchronize(torch.device(device))
    t_features = time.perf_counter() - t0
    t0 = time.perf_counter()
    fid = frechet_distance(*feats)
    t_fid = time.perf_counter() - t0
    t0 = time.perf_counter()
    kid, _ = kernel_inception_distance(*feats, subset_size=min(100, images))
    t_kid = time.perf_counter() - t0
    return {"images_per_set": images, "features": features, "device": device, "image_size": size,
            "feature_seconds": round(t_features, 2), "images_per_second": round(2 * images / t_features, 2),
            "frechet_seconds": round(t_fid, 3), "kid_seconds": round(t_kid, 3),
            "direction_seconds": round(t_features + t_fid + t_kid, 2), "fid": fid, "kid": kid,
            "torch_threads": torch.get_num_threads(), "machine": machine_info(torch.device(device))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=744, help="slices per set (744 = the paper's test size)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--features", choices=("inception", "random"), default="inception")
    parser.add_argument("--quick", action="store_true", help="8 images, 64 x 64, random features: a smoke run")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    if args.quick:
        args.images, args.size, args.features = 8, 64, "random"
    row = measure(args.images, args.device, args.batch, args.features, args.size)
    print("| images per set | device | features | feature s | images/s | Fréchet s | KID s | one direction s |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {row['images_per_set']} | {row['device']} | {row['features']} | {row['feature_seconds']} | "
          f"{row['images_per_second']} | {row['frechet_seconds']} | {row['kid_seconds']} | "
          f"{row['direction_seconds']} |")
    if args.json:
        write_json(row, args.json)


if __name__ == "__main__":
    main()
