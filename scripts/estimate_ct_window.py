"""Estimate the HU window (level, width) with which a folder of 8-bit CT PNGs was exported.

For an export with window [lo, hi] = [L - W/2, L + W/2] a pixel of HU value h has the grey value
g = 255 * (h - lo) / W, clipped to [0, 255]. The script pools the grey-level histogram of the intracranial
region (inside the saturated skull, which is filled and eroded), fits three Gaussians (CSF, white matter,
grey matter; WM and GM share one spread) to it, and solves g = 255 * (h - L + W/2) / W for (L, W) by least
squares, with textbook HU values for the three tissues. Uncertainty: a block bootstrap over images
(blocks of consecutive files, about one scan each) and draws of the tissue HU within their textbook ranges.

    python scripts/estimate_ct_window.py --images /data/ct-to-mri-cgan/trainA --json window.json
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi
from scipy.optimize import curve_fit
from scipy.signal import find_peaks

#: Textbook HU ranges of the tissues whose peaks are fitted (the fit uses the midpoints).
TISSUE_HU: dict[str, tuple[float, float]] = {
    "csf": (5.0, 15.0), "white_matter": (20.0, 30.0), "grey_matter": (35.0, 45.0)}
CHECK_HU: dict[str, float] = {"air": -1000.0, "fat": -100.0, "bone": 700.0}
SKULL_GREY = 250  # grey values >= this count as saturated bone


def _natural_key(path: Path) -> list[int | str]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def image_histograms(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Grey-level histograms (256 bins) of the whole image and of its intracranial region (empty if none)."""
    img = np.asarray(Image.open(path).convert("L"))
    whole = np.bincount(img.ravel(), minlength=256)
    skull = img >= SKULL_GREY
    inner = ndi.binary_fill_holes(skull) & ~ndi.binary_dilation(skull, iterations=max(1, round(min(img.shape) / 170)))
    if inner.mean() < 0.02:  # no closed skull ring (skull base, vertex, neck)
        return whole, np.zeros(256, dtype=np.int64)
    return whole, np.bincount(img[inner], minlength=256)


def _mixture(x: np.ndarray, a0: float, m0: float, s0: float, a1: float, m1: float, a2: float, m2: float,
             s: float, c: float) -> np.ndarray:
    gauss = lambda a, m, sd: a * np.exp(-0.5 * ((x - m) / sd) ** 2)  # noqa: E731
    return c + gauss(a0, m0, s0) + gauss(a1, m1, s) + gauss(a2, m2, s)


def fit_peaks(hist: np.ndarray, smooth: float = 3.0, tail: float = 0.05) -> np.ndarray:
    """Grey positions of the CSF, WM and GM peaks of an intracranial histogram (3-Gaussian fit).

    Grey values 0-2 (air, JPEG black) and >= 250 (bone) are ignored; the smoothing (sigma in grey levels)
    removes the comb left by lossy compression; the fit ends where the histogram falls below ``tail`` of its
    maximum above the mode (blood, calcification and bone partial volume lie beyond).
    """
    h = hist.astype(float)
    h[:3] = 0.0
    h[SKULL_GREY:] = 0.0
    hs = ndi.gaussian_filter1d(h / h.sum(), smooth)
    x = np.arange(256.0)
    m = int(np.argmax(hs))
    top = hs[m]
    upper = m + int(np.argmax(hs[m:] < tail * top))
    half = np.nonzero(hs >= 0.5 * top)[0]
    hw = max((half.max() - half.min()) / 2.0, 2.0)
    low = np.nonzero(hs[:m] < 0.1 * top)[0]
    csf0 = max(3.0, (low.max() if len(low) else 3.0) - hw / 2)
    sel = (x >= 3) & (x <= upper)
    bounds = ([0, 3, 1, 0, 3, 0, 3, 1, 0], [np.inf, upper, 80, np.inf, upper, np.inf, upper, 80, np.inf])
    best: tuple[float, np.ndarray] | None = None
    for k in (0.3, 0.5, 0.8):  # a few starts; keep the best ordered fit
        p0 = [0.05 * top, csf0, hw / 2, top, m - k * hw, top, m + k * hw, hw / 2, 0.0]
        try:
            p, _ = curve_fit(_mixture, x[sel], hs[sel], p0=p0, bounds=bounds, maxfev=20000)
        except RuntimeError:
            continue
        peaks = np.array([p[1], *sorted((p[4], p[6]))])
        sse = float(np.sum((_mixture(x[sel], *p) - hs[sel]) ** 2))
        if peaks[0] < peaks[1] - 2 < peaks[2] - 4 and (best is None or sse < best[0]):
            best = (sse, peaks)
    if best is None:
        raise RuntimeError("no ordered CSF < WM < GM fit found")
    return best[1]


def fit_window(peaks: np.ndarray, hu: np.ndarray) -> tuple[float, float]:
    """Least-squares (level, width) from grey positions ``peaks`` of tissues with HU values ``hu``."""
    slope, intercept = np.polyfit(hu, peaks, 1)
    return float((127.5 - intercept) / slope), float(255.0 / slope)


def grey(hu: float, level: float, width: float) -> float:
    return float(np.clip(255.0 * (hu - level + width / 2) / width, 0, 255))


def _summary(values: np.ndarray) -> dict[str, float]:
    lo, med, hi = np.percentile(values, [16, 50, 84])
    return {"median": round(float(med), 2), "p16": round(float(lo), 2), "p84": round(float(hi), 2),
            "sd": round(float(np.std(values)), 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path, required=True, help="folder of 8-bit CT PNGs")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N files (natural sort order)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples (0: none)")
    ap.add_argument("--block", type=int, default=30, help="consecutive files per bootstrap block (about a scan)")
    ap.add_argument("--hu-draws", type=int, default=2000, help="draws of the tissue HU within their ranges")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    files = sorted(args.images.glob("*.png"), key=_natural_key)[: args.limit]
    if not files:
        ap.error(f"no PNG files in {args.images}")
    whole, inner = map(np.array, zip(*(image_histograms(f) for f in files), strict=True))
    used = inner.sum(axis=1) > 0
    pooled = whole.sum(axis=0)
    frac = pooled / pooled.sum()
    ws = ndi.gaussian_filter1d(np.where((np.arange(256) > 2) & (np.arange(256) < SKULL_GREY), frac, 0.0), 3.0)
    whole_peaks = (find_peaks(ws[8:245], prominence=0.02 * ws.max())[0] + 8).tolist()  # away from the cut edges

    names = list(TISSUE_HU)
    hu_mid = np.array([np.mean(TISSUE_HU[n]) for n in names])
    peaks = fit_peaks(inner.sum(axis=0))
    level, width = fit_window(peaks, hu_mid)

    rng = np.random.default_rng(args.seed)
    blocks = np.arange(len(files)) // max(args.block, 1)
    boot = []
    for _ in range(args.bootstrap):
        pick = rng.choice(blocks.max() + 1, size=blocks.max() + 1)
        try:
            boot.append(fit_peaks(sum(inner[blocks == b].sum(axis=0) for b in pick)))
        except (RuntimeError, ValueError):
            continue
    lo_hu, hi_hu = np.array([TISSUE_HU[n] for n in names]).T
    hu_draws = rng.uniform(lo_hu, hi_hu, size=(args.hu_draws, 3))
    sets: dict[str, list[tuple[float, float]]] = {
        "bootstrap": [fit_window(b, hu_mid) for b in boot],
        "hu_ranges": [fit_window(peaks, h) for h in hu_draws],
        "combined": [fit_window(boot[i % len(boot)] if boot else peaks, h) for i, h in enumerate(hu_draws)]}
    result = {
        "images": str(args.images), "n_images": len(files), "n_intracranial": int(used.sum()),
        "fraction_0": round(float(frac[0]), 4), "fraction_le2": round(float(frac[:3].sum()), 4),
        "fraction_255": round(float(frac[255]), 4), "whole_image_peaks": whole_peaks,
        "peaks": {n: round(float(g), 1) for n, g in zip(names, peaks, strict=True)},
        "peaks_bootstrap_sd": {n: round(float(s), 2) for n, s in zip(names, np.std(boot, axis=0), strict=True)}
        if boot else None,
        "tissue_hu_fit": dict(zip(names, hu_mid.tolist(), strict=True)),
        "level": round(level, 1), "width": round(width, 1),
        "uncertainty": {k: {"level": _summary(np.array(v)[:, 0]), "width": _summary(np.array(v)[:, 1])}
                        for k, v in sets.items() if v},
        "grey_of": {k: round(grey(h, level, width), 1) for k, h in CHECK_HU.items()},
        "seconds": round(time.perf_counter() - t0, 1)}
    print(f"{len(files)} images, {used.sum()} with an intracranial region; pixels at 0: {frac[0]:.1%}, "
          f"<= 2: {frac[:3].sum():.1%}, at 255: {frac[255]:.1%}; whole-image peaks (8..244): {whole_peaks}")
    print("intracranial peaks (grey): " + ", ".join(f"{n} {g:.1f}" for n, g in result["peaks"].items()))
    print(f"fitted window: level {level:.1f} HU, width {width:.1f} HU  (lo {level - width / 2:.1f}, "
          f"hi {level + width / 2:.1f}); air -> {result['grey_of']['air']}, fat -> {result['grey_of']['fat']}, "
          f"bone -> {result['grey_of']['bone']}")
    for k, u in result["uncertainty"].items():
        print(f"  {k:9s}: level {u['level']['median']} [{u['level']['p16']}, {u['level']['p84']}], "
              f"width {u['width']['median']} [{u['width']['p16']}, {u['width']['p84']}]  (median [16th, 84th])")
    print(f"{result['seconds']} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
