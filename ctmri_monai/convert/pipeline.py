"""Slice-wise conversion of one volume with a 2D generator, on the model's data contract and the input's grid.

load (the one volume loader) -> check the contract's preconditions -> the model's `volume_pipeline` (orientation,
source intensity, in-plane framing) -> generator over axial slices (or 2k + 1 slice stacks) in batches (MONAI
``SliceInferer``) -> background outside the input's head mask -> MONAI inverse of framing and orientation ->
target intensity (synthetic CT in HU through the model's window as int16, synthetic MRI as float32 in [-1, 1]) ->
NIfTI with the input's shape and affine, marked SYNTHETIC with its valid range.

`convert_loaded` does everything in memory (the service object and the DICOM node use it); `write_converted`
writes its NIfTI and DICOM outputs; `convert_volume` is both, for one file. With ``options.disagreement``,
the disagreement map (`ctmri_monai.convert.trust`) is computed from the same translation,
its figures go into the report (``disagreement``), its flagged regions into the QA montage, and the map itself is
written beside the output as ``<stem>_<direction>_disagreement.nii.gz``; it never changes the synthetic volume.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctmri_monai import DOMAINS
from ctmri_monai.convert.options import ConvertOptions, split_options
from ctmri_monai.convert.qa import MontageLayout, consistency_report, save_montage
from ctmri_monai.convert.trust import disagreement_description, disagreement_path, volume_disagreement
from ctmri_monai.engines.slices import SliceRun, translate_volume, valid_range
from ctmri_monai.io.errors import InputError
from ctmri_monai.io.nifti import nifti_image_like, output_error, write_nifti
from ctmri_monai.io.orientation import axial_slice_numbers
from ctmri_monai.io.paths import path_stem
from ctmri_monai.io.volume import Volume, load_volume
from ctmri_monai.spec import ModelSpec
from ctmri_monai.transforms.checks import check_contract
from ctmri_monai.transforms.intensity import require_ct_window

logger = logging.getLogger(__name__)

def synthetic_description(source: str, target: str, model_info: Mapping[str, Any] | None = None,
                          value_range: Mapping[str, Any] | None = None) -> str:
    """``SYNTHETIC <source>2<target> HU[-20,100] model=<file>:<sha256[:12]>``, at most 80 characters (NIfTI
    descrip); the range is the one the model can express (HU for synthetic CT)."""
    span = f"HU[{value_range['min']:g},{value_range['max']:g}] " if value_range and value_range["unit"] == "HU" else ""
    head = f"SYNTHETIC {source}2{target} {span}model="
    info = model_info or {}
    name = Path(str(info.get("file") or "unknown")).name
    tail = f":{str(info.get('sha256'))[:12]}" if info.get("sha256") else ""
    room = 80 - len(head) - len(tail)
    if len(name) > room:
        name = name[: max(room - 1, 0)] + "~"
    return (head + name + tail)[:80]


def _check_route(source: str, target: str, spec: ModelSpec, model_info: Mapping[str, Any] | None) -> None:
    if source not in DOMAINS or target not in DOMAINS:
        raise ValueError(f"source and target must be in {DOMAINS}, got {source!r}, {target!r}")
    if target == "ct":
        require_ct_window(spec, (model_info or {}).get("file", "model"))


@dataclass(frozen=True)
class Model:
    """A generator with its data contract and what outputs record about it (`networks.loading.model_info`)."""

    generator: Callable[[torch.Tensor], torch.Tensor]
    spec: ModelSpec
    info: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Converted:
    """A conversion in memory: the synthetic ``array`` on the input's grid, the input ``volume`` (its image freed)
    and the ``report`` (direction, shape, slices, timings, qa, warnings, value_range, background_masked,
    description, disagreement: the map's figures or None); ``disagreement``: the map on the input's grid."""

    array: np.ndarray
    volume: Volume
    report: dict[str, Any]
    started: float = 0.0
    disagreement: np.ndarray | None = None


def convert_loaded(input_path: str | os.PathLike, volume: Volume, model: Model, source: str, target: str,
                   options: ConvertOptions, progress: Any = None, montage: Path | None = None) -> Converted:
    """Convert a loaded ``volume`` (from ``input_path``, named in errors) in memory; with ``montage`` also write
    the QA montage there. Bad input raises `InputError` or `ContractError`."""
    t_start = time.perf_counter()
    spec = model.spec
    _check_route(source, target, spec, model.info)
    device = torch.device(options.device)
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - since, 4)
        return now

    warnings = volume.warnings + check_contract(input_path, volume.image, spec, source)
    t = lap("load", t_start)

    run = SliceRun(options.batch_size, device, options.amp, progress, options.inferer)
    translation = translate_volume(input_path, volume.image, model.generator, spec, source, target, run,
                                   mask_background=options.mask_background)
    warnings += translation.warnings
    timings.update(translation.timings)
    trust = None
    if options.disagreement:
        t = time.perf_counter()
        run = {"batch_size": options.batch_size, "device": device, "amp": options.amp}
        try:
            trust = volume_disagreement(translation, model.generator, spec, f"{source}2{target}", run)
        except Exception as exc:  # noqa: BLE001 - the map is a warning on top: its failure must not lose the output
            logger.warning("%s: no disagreement map (%s: %s)", input_path, type(exc).__name__, exc)
            warnings.append(f"no disagreement map ({type(exc).__name__}: {exc})")
        lap("disagreement", t)
    volume.image = None  # type: ignore[assignment]  # free the float32 copy of the input
    t = time.perf_counter()

    axis, numbers = axial_slice_numbers(volume.affine, volume.shape, spec.geometry.axcodes,
                                        int(translation.source_unit.shape[-1]))
    source_unit, fake_unit = translation.source_unit, translation.fake_unit
    qa = consistency_report(source_unit, fake_unit, options.qa_threshold, slice_index=numbers)
    qa["slice_axis"] = axis
    qa["gap"] = translation.gap  # the domain gap (ctmri_monai.transforms.gap): in the montage and summary.json
    if montage is not None:
        try:
            layout = MontageLayout(axcodes=spec.geometry.axcodes, spacing=translation.spacing)
            qa["montage"] = str(save_montage(source_unit, fake_unit, montage, qa, numbers, layout,
                                             None if trust is None else trust.frames_flagged))
        except OSError as exc:
            raise output_error(montage, exc) from exc
    lap("qa", t)

    array = translation.output
    del translation

    value_range = valid_range(spec, target)
    report: dict[str, Any] = dict(
        direction=f"{source}2{target}",
        shape=list(volume.shape),
        slices=int(array.shape[axis]) if axis is not None else None,
        timings=timings,
        qa=qa,
        warnings=warnings,
        value_range=value_range,
        background_masked=bool(options.mask_background),
        description=synthetic_description(source, target, model.info, value_range),
        disagreement=None if trust is None else trust.figures,
    )
    return Converted(array, volume, report, t_start, None if trust is None else trust.grid)


def write_converted(converted: Converted, output_path: str | os.PathLike, dicom_output_dir: str | os.PathLike | None,
                    model_info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write the NIfTI (the disagreement map beside it when there is one; and, with ``dicom_output_dir``, the
    derived DICOM series) of ``converted``, all or nothing; returns {"output", "dicom_output", "dicom_series_uid"}
    and the map's path in ``report["disagreement"]["map"]``."""
    array, volume, report = converted.array, converted.volume, converted.report
    source, target = report["direction"].split("2")
    result: dict[str, Any] = {"dicom_output": None, "dicom_series_uid": None}
    output: Path | None = None
    dmap: Path | None = None
    try:
        output = write_nifti(nifti_image_like(array, volume, report["description"]), output_path)
        if converted.disagreement is not None:
            description = disagreement_description(report["direction"], model_info)
            dmap = write_nifti(nifti_image_like(converted.disagreement, volume, description),
                               disagreement_path(output_path, report["direction"]))
            report["disagreement"]["map"] = str(dmap)
        else:  # a map left by an earlier conversion does not describe this output (a batch would skip the pair)
            disagreement_path(output_path, report["direction"]).unlink(missing_ok=True)
        if dicom_output_dir is not None:
            from ctmri_monai.io.dicom_write import write_dicom_series

            try:
                dicom = write_dicom_series(array, volume.series, dicom_output_dir, source, target, model_info)
            except OSError as exc:
                raise output_error(dicom_output_dir, exc) from exc
            result.update(dicom_output=str(dicom["folder"]), dicom_series_uid=dicom["series_uid"])
    except Exception:
        for done in (output, dmap):  # all or nothing: no NIfTI or map without the other and the DICOM series
            if done is not None:
                done.unlink(missing_ok=True)
        if report["qa"].get("montage"):
            Path(report["qa"]["montage"]).unlink(missing_ok=True)
        raise
    result["output"] = str(output)
    return result


_CALL_NAMES = ("model_info", "dicom_output_dir", "qa_dir", "progress", "volume")


def convert_volume(input_path: str | os.PathLike, output_path: str | os.PathLike,
                   generator: Callable[[torch.Tensor], torch.Tensor], spec: ModelSpec, source: str = "ct",
                   target: str = "mri", options: ConvertOptions | None = None, **names: Any) -> dict[str, Any]:
    """Convert one volume slice by slice with ``generator`` ((B, 2k + 1, S, S) in [-1, 1] -> (B, 1, S, S)) on the
    data contract ``spec``, and write ``output_path`` (NIfTI) on exactly the input's grid; optionally a synthetic
    DICOM series and a QA montage.

    ``options`` (`ConvertOptions`), or its fields by name (batch_size, device, amp, mask_background, qa_threshold,
    max_voxels, series_uid, inferer). Further names: ``model_info``; ``dicom_output_dir``; ``qa_dir`` (the montage
    folder); ``progress`` (an object with ``update(n)``, e.g. a tqdm bar, advanced per slice); ``volume``
    (``input_path`` already loaded with `load_volume`, e.g. read ahead by a batch).
    Returns a dict: input, output, direction, shape, slices, seconds, timings, qa, warnings, value_range,
    dicom_output, dicom_series_uid, disagreement (the map's figures and path, or None). Bad input raises
    `InputError` or `ContractError` naming the file; nothing is left behind then.
    """
    t_start = time.perf_counter()
    options, call = split_options(options, **names)
    unknown = sorted(set(call) - set(_CALL_NAMES))
    if unknown:
        raise TypeError(f"convert_volume() got unexpected keyword argument(s) {', '.join(unknown)}")
    model_info, dicom_output_dir = call.get("model_info"), call.get("dicom_output_dir")
    _check_route(source, target, spec, model_info)  # before anything is read
    volume = call.get("volume")
    if volume is None:
        volume = load_volume(input_path, series_uid=options.series_uid, max_voxels=options.max_voxels)
    if dicom_output_dir is not None and volume.kind != "dicom":
        raise InputError(input_path, "DICOM output needs a DICOM series input")
    qa_dir = call.get("qa_dir")
    montage = Path(qa_dir) / f"{path_stem(output_path)}_qa.png" if qa_dir is not None else None
    model = Model(generator, spec, model_info or {})
    converted = convert_loaded(input_path, volume, model, source, target, options, call.get("progress"), montage)
    converted.report["timings"]["load"] = round(converted.report["timings"]["load"] + converted.started - t_start,
                                                4)
    t = time.perf_counter()
    written = write_converted(converted, output_path, dicom_output_dir, model_info)
    report = converted.report
    report["timings"]["write"] = round(time.perf_counter() - t, 4)
    del converted
    return {"dicom_output": written["dicom_output"], "dicom_series_uid": written["dicom_series_uid"],
            "input": str(input_path), "output": written["output"], "direction": report["direction"],
            "shape": report["shape"], "slices": report["slices"], "seconds": round(time.perf_counter() - t_start, 3),
            "timings": report["timings"], "qa": report["qa"], "warnings": report["warnings"],
            "value_range": report["value_range"], "background_masked": report["background_masked"],
            "description": report["description"], "disagreement": report["disagreement"]}
