"""Conversion as a service object: one model loaded once, many inputs converted in memory or to files.

`ConversionService` is built once from a checkpoint (or from generators already in memory), the device and the
logged contract overrides: the checkpoint is read once, its generators built once, its contract resolved once.
It converts a loaded volume (`convert`), a DICOM series folder into a result holding the derived series'
datasets (`convert_series`), or a file into NIfTI / DICOM outputs (`convert_file`, the batch's and
``ctmri convert``'s road). The DICOM node and DICOMweb conversion go through it too. The disagreement map
(``ConvertOptions.disagreement``, off by default) needs the forward generator alone, so every model can give one,
an exported file included. The generators may run on a CPU engine
(`ctmri_monai.engines.runtimes`: torch, ONNX Runtime, OpenVINO); `from_exported` builds the service from a file
of `ctmri export`, whose contract comes from the file alone.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ctmri_monai import DIRECTIONS
from ctmri_monai.convert.options import ConvertOptions, ModelSource
from ctmri_monai.convert.pipeline import Converted, Model, convert_loaded, convert_volume
from ctmri_monai.io.dicom_write import DerivedSeries, derive_series
from ctmri_monai.io.errors import ContractError, InputError
from ctmri_monai.io.volume import Volume, load_volume
from ctmri_monai.spec import ModelSpec
from ctmri_monai.transforms.intensity import require_ct_window

__all__ = ["ConversionService", "SeriesConversion", "direction_for_modality", "resolve_contract",
           "reverse_direction"]

logger = logging.getLogger(__name__)

#: The direction a series' Modality asks for.
MODALITY_DIRECTIONS = {"CT": "ct2mri", "MR": "mri2ct"}


def reverse_direction(direction: str) -> str:
    """The other direction of a CycleGAN (ct2mri <-> mri2ct)."""
    source, target = DIRECTIONS[direction]
    return f"{target}2{source}"


def resolve_contract(spec: ModelSpec | None, info: Mapping[str, Any],
                     overrides: Mapping[str, Any] | None = None) -> ModelSpec:
    """The contract a batch converts with: ``spec``, else the model info's; ``overrides`` applied (logged).

    Refused (`ContractError` naming the model and the option): no contract at all, a generator with more than one
    output channel, or a CT window nobody knows (every direction needs it: CT is either the input or the output).
    """
    origin = info.get("file") or "generator"
    if spec is None:
        if info.get("spec") is not None:
            spec = info["spec"]
        elif info.get("model_spec") is not None:
            spec = ModelSpec.from_state(info["model_spec"])
        else:
            raise ContractError(origin, "no model contract: give spec= (a ModelSpec) or a checkpoint")
    spec = spec.with_overrides(**dict(overrides or {})) if overrides else spec
    if spec.network.out_channels != 1:
        raise ContractError(origin, f"a generator with {spec.network.out_channels} output channels; volume "
                                    "conversion writes one gray slice per slice")
    for note in spec.notes:  # assumptions behind a version-1 contract are warnings; the rest is information
        (logger.warning if spec.version < 2 else logger.info)("%s: %s", origin, note)
    require_ct_window(spec, origin)
    return spec


def _run_options(options: Any, model: str | os.PathLike | None) -> ConvertOptions:
    """``options``, or `ConvertOptions.for_run` for ``model`` when None; anything else is refused by name."""
    if options is None:
        return ConvertOptions.for_run(model=model)
    if not isinstance(options, ConvertOptions):
        raise TypeError(f"options must be ConvertOptions (e.g. ConvertOptions.for_run({options!r})), "
                        f"not {type(options).__name__}")
    return options


def direction_for_modality(modality: str, available: Iterable[str], where: str = "series") -> str:
    """The direction for a series of ``modality`` (CT -> ct2mri, MR -> mri2ct) among ``available`` ones;
    `ContractError` naming ``where`` otherwise."""
    direction = MODALITY_DIRECTIONS.get(str(modality).upper())
    if direction is None:
        raise ContractError(where, f"modality {modality or '(none)'!r} has no conversion; CT and MR series convert")
    if direction not in set(available):
        raise ContractError(where, f"a {modality} series needs the {direction} generator, which the model lacks")
    return direction


@dataclass
class SeriesConversion:
    """A DICOM series converted in memory: the conversion and its derived series (``derived.datasets()``)."""

    converted: Converted
    derived: DerivedSeries


class ConversionService:
    """One model (generators by direction, one contract) that converts many inputs with one set of options."""

    def __init__(self, generators: Mapping[str, Callable[[torch.Tensor], torch.Tensor]], spec: ModelSpec | None,
                 model_info: Mapping[str, Any] | None = None, options: ConvertOptions | None = None,
                 contract_overrides: Mapping[str, Any] | None = None) -> None:
        unknown = sorted(set(generators) - set(DIRECTIONS))
        if unknown or not generators:
            raise ValueError(f"generators by direction {tuple(DIRECTIONS)} expected, got {sorted(generators)}")
        info = dict(model_info or {})
        self.spec = resolve_contract(spec, info, contract_overrides)
        info.update(spec=self.spec, model_spec=self.spec.state_dict())
        self.info = info
        self.generators = dict(generators)
        self.options = options or ConvertOptions()

    @classmethod
    def from_source(cls, source: ModelSource, direction: str,
                    options: ConvertOptions | None = None) -> ConversionService:
        """The service of a batch's `ModelSource` for ``direction`` (a checkpoint, or a generator with its
        contract); ``options`` None: `ConvertOptions.for_run` for it."""
        if source.checkpoint is not None:
            return cls.from_checkpoint(source.checkpoint, options, contract_overrides=source.contract_overrides,
                                       directions=[direction], loader=source.load_model)
        options = options or ConvertOptions.for_run()
        if options.engine is not None:
            raise ValueError(f"engine {options.engine!r} runs a checkpoint or an exported file; a generator given "
                             "in memory runs as it is (wrap it with engines.runtimes.engine_for_module)")
        return cls({direction: source.generator}, source.spec, source.model_info, options, source.contract_overrides)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike, options: ConvertOptions | None = None, *,
                        contract_overrides: Mapping[str, Any] | None = None, directions: Iterable[str] | None = None,
                        loader: Callable[..., tuple[Any, dict]] | None = None) -> ConversionService:
        """Read ``checkpoint`` once and build its generators (``directions``: default every one it holds).
        ``options``: as `ConvertOptions.for_run` built them
        (default: for this checkpoint), whose engine (`ctmri_monai.engines.runtimes`) runs every generator;
        ``loader(path, direction, device) -> (module, info)`` replaces the built-in loading. An exported file
        goes to `from_exported`."""
        from ctmri_monai.networks.export import exported_format

        options = _run_options(options, checkpoint)
        if exported_format(checkpoint) is not None:
            if loader is not None:
                raise ValueError(f"{checkpoint}: an exported file is opened by its engine; loader does not apply")
            return cls.from_exported(checkpoint, options, contract_overrides, directions)
        dev, engine = options.device, options.engine
        if loader is not None:
            if engine is not None:
                raise ValueError(f"a loader builds the generators itself: engine {engine!r} does not apply")
            generators: dict[str, Any] = {}
            info: dict[str, Any] = {}
            for direction in directions or DIRECTIONS:
                generators[direction], info = loader(checkpoint, direction, str(dev))
            return cls(generators, None, info, options, contract_overrides)
        from ctmri_monai.io.checkpoint_file import load_checkpoint
        from ctmri_monai.networks.loading import generator_from, model_info

        data = load_checkpoint(checkpoint, map_location="cpu")
        wanted = list(directions) if directions is not None else [d for d in DIRECTIONS if f"generator_{d}" in data]
        generators = {d: generator_from(data, d, checkpoint, dev) for d in wanted}
        spec = ModelSpec.from_state(data.get("model_spec"))
        if engine is not None:
            from ctmri_monai.engines.runtimes import engine_for_module

            generators = {d: engine_for_module(g, spec, engine, options.threads) for d, g in generators.items()}
        info = model_info(checkpoint, wanted[0] if len(wanted) == 1 else "", spec)
        if engine is not None:
            info["engine"] = engine
        return cls(generators, spec, info, options, contract_overrides)

    @classmethod
    def from_exported(cls, path: str | os.PathLike, options: ConvertOptions | None = None,
                      contract_overrides: Mapping[str, Any] | None = None,
                      directions: Iterable[str] | None = None) -> ConversionService:
        """A service on an exported file (`ctmri export`) run by ``options.engine`` on the CPU: its contract and
        its direction come from the file alone (`ContractError` for a file without one)."""
        from ctmri_monai.engines.runtimes import open_exported
        from ctmri_monai.utils.hashing import file_sha256

        options = _run_options(options, path)
        if torch.device(options.device).type != "cpu":
            raise ValueError(f"{path}: an exported file runs on the CPU, not on {options.device}: build the "
                             "options with ConvertOptions.for_run(model=path)")
        runner, contract = open_exported(path, options.engine, options.threads)
        direction = contract["direction"]
        if directions is not None and direction not in set(directions):
            raise ContractError(path, f"an exported {direction} generator; {', '.join(directions)} was asked for")
        spec = ModelSpec.from_state(contract["model_spec"])
        info = {"file": str(path), "sha256": file_sha256(path), "direction": direction, "engine": runner.name,
                "source_sha256": contract.get("source_sha256"), "source_checkpoint": contract.get("source_checkpoint")}
        return cls({direction: runner}, spec, info, options, contract_overrides)

    @property
    def directions(self) -> list[str]:
        """The directions this model converts."""
        return list(self.generators)

    def model(self, direction: str) -> Model:
        """The generator of ``direction`` with the contract and the model info."""
        if direction not in self.generators:
            raise ContractError(self.info.get("file") or "model",
                                f"no {direction} generator (it has {', '.join(self.generators)})")
        return Model(self.generators[direction], self.spec, dict(self.info, direction=direction))

    def writes_map(self, direction: str) -> bool:
        """Whether conversions of ``direction`` write a disagreement map (the forward generator is enough)."""
        return bool(self.options.disagreement) and direction in self.generators

    def convert(self, volume: Volume, direction: str, progress: Any = None,
                montage: Path | None = None) -> Converted:
        """Convert a loaded volume in memory: the synthetic volume and its report."""
        source, target = DIRECTIONS[direction]
        return convert_loaded(volume.path, volume, self.model(direction), source, target, self.options, progress,
                              montage)

    def convert_series(self, folder: str | os.PathLike, direction: str | None = None,
                       series_uid: str | None = None) -> SeriesConversion:
        """Convert the DICOM series in ``folder``; ``direction`` None: from its Modality. Refusals (a synthetic
        series, a contract that cannot describe it) raise `InputError` / `ContractError` naming the folder."""
        volume = load_volume(folder, series_uid=series_uid or self.options.series_uid,
                             max_voxels=self.options.max_voxels)
        if volume.kind != "dicom" or volume.series is None:
            raise InputError(folder, "not a DICOM series folder")
        direction = direction or direction_for_modality(volume.series.modality, self.directions, str(folder))
        source, target = DIRECTIONS[direction]
        converted = self.convert(volume, direction)
        derived = derive_series(converted.array, converted.volume.series, source, target, self.info)
        return SeriesConversion(converted, derived)

    def convert_file(self, path: str | os.PathLike, output: str | os.PathLike, direction: str,
                     **outputs: Any) -> dict[str, Any]:
        """Convert the file or series ``path`` into the NIfTI ``output``; ``outputs``: ``dicom_output_dir``,
        ``qa_dir``, ``progress``, ``volume`` (see `convert_volume`). Returns `convert_volume`'s result."""
        model = self.model(direction)
        source, target = DIRECTIONS[direction]
        return convert_volume(path, output, model.generator, self.spec, source, target, self.options,
                              model_info=self.info, **outputs)
