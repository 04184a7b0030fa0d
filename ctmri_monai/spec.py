"""The model specification: the data contract a model carries from training to conversion and evaluation.

A ``ModelSpec`` says how raw data became the generator's [-1, 1] input in training, for each domain, and how the
networks are built. Training writes it into every checkpoint (``model_spec``); conversion, evaluation and paired
metrics build their preprocessing from it and from nothing else (``ctmri_monai.transforms.pipelines``). This
dataclass is the single source of every default of the contract.

* ``ct``: CT values -> [-1, 1] is the HU ``window`` [lo, hi] mapped linearly and clipped. A model trained on
  8-bit CT images (``stored_as="eight_bit"``) saw HU through the window those images were exported with; it is
  ``None`` when nobody declared it, and then HU volumes cannot be converted without an explicit override.
* ``mri``: MRI volumes -> [-1, 1] maps the ``percentiles`` of the foreground to -1 and +1.
* ``geometry``: how a slice becomes ``image_size`` x ``image_size``: ``framing`` "spacing" resamples in-plane to
  ``pixdim`` mm, then centre-crops / pads; "fit" scales the field of view so its longer side fills the image, then
  pads; "crop" keeps the pixel size and centre-crops / pads; "resize_crop" scales the shorter side to
  ``image_size * 286 / 256``, then centre-crops. ``context_slices`` k: the generator sees 2k + 1 neighbouring
  axial slices as channels. ``frame_by`` "head" (the default of "fit" models that recorded their training head
  size): a volume is framed by its head, not its field of view (``transforms.spatial``); "field_of_view": the older
  behaviour, an explicit override.
* ``training``: per domain, what the training images looked like (`TrainingReference`): the head extent in the
  frame, the in-head [-1, 1] quantiles and the distance between two halves of the training set. It drives the
  head-scale framing, MRI standardisation and the domain gap reported per conversion; checkpoints written before
  it have none and convert as before (logged).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

__all__ = ["FRAME_BY", "FRAMINGS", "LAYOUTS", "NYUL_LEVELS", "OLD_CONTRACT_NOTE", "QUANTILE_LEVELS", "SPEC_VERSION",
           "CTIntensity", "MRIIntensity", "ModelSpec", "NetworkSpec", "SliceGeometry", "TrainingReference",
           "window_from_level_width"]

logger = logging.getLogger(__name__)

SPEC_VERSION = 2
LAYOUTS = ("images", "volumes")
FRAMINGS = ("fit", "crop", "resize_crop", "spacing")
CT_STORAGE = ("hu", "eight_bit")
MRI_STORAGE = ("intensity", "eight_bit")
FRAME_BY = ("head", "field_of_view")
#: Logged for checkpoints written before the training references (`TrainingReference`).
OLD_CONTRACT_NOTE = ("the checkpoint records no training head size or intensity landmarks (written before them): "
                     "volumes are framed by their field of view, MRI by its percentiles alone, and no domain gap is "
                     "reported")
#: Percent levels of the recorded in-head quantiles (0, 1, ..., 100) and the subset that serves as Nyul-Udupa
#: standardisation landmarks (1, 10, 20, ..., 90, 99).
QUANTILE_LEVELS = tuple(float(k) for k in range(101))
NYUL_LEVELS = (1.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 99.0)


def window_from_level_width(level: float, width: float) -> tuple[float, float]:
    """A radiological (level, width) window as the HU range [lo, hi] it maps to black .. white."""
    if not float(width) > 0:
        raise ValueError(f"window width must be > 0, got {width}")
    return float(level) - float(width) / 2.0, float(level) + float(width) / 2.0


def _pair(value: Any, name: str) -> tuple[float, float]:
    values = [float(v) for v in value]
    if len(values) != 2 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name} must be two finite numbers, got {value!r}")
    return values[0], values[1]


def _choice(value: str, allowed: tuple[str, ...], name: str) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


@dataclass
class CTIntensity:
    """CT -> [-1, 1]: the HU ``window`` [lo, hi], linear and clipped; ``None``: unknown (8-bit images without a
    declared export window). ``stored_as``: what the training files held, "hu" or "eight_bit"."""

    window: tuple[float, float] | None = (-1000.0, 1000.0)
    stored_as: str = "hu"

    def __post_init__(self) -> None:
        _choice(self.stored_as, CT_STORAGE, "ct.stored_as")
        if self.window is not None:
            self.window = _pair(self.window, "ct.window")
            if not self.window[1] > self.window[0]:
                raise ValueError(f"ct.window must be [lo, hi] with hi > lo, got {self.window}")

    def describe(self) -> str:
        if self.window is None:
            return "HU window unknown"
        lo, hi = self.window
        return f"HU window [{lo:g}, {hi:g}] (level {(lo + hi) / 2:g}, width {hi - lo:g})"


@dataclass
class MRIIntensity:
    """MRI -> [-1, 1]: foreground ``percentiles`` (lower, upper) -> (-1, +1), clipped. ``declared``: whether the
    training data said so (False: 8-bit MRI images whose normalisation nobody declared; volumes use these
    percentiles as the closest equivalent)."""

    percentiles: tuple[float, float] = (0.5, 99.5)
    stored_as: str = "intensity"
    declared: bool = True

    def __post_init__(self) -> None:
        _choice(self.stored_as, MRI_STORAGE, "mri.stored_as")
        self.percentiles = _pair(self.percentiles, "mri.percentiles")
        if not 0.0 <= self.percentiles[0] < self.percentiles[1] <= 100.0:
            raise ValueError(f"mri.percentiles must satisfy 0 <= lower < upper <= 100, got {self.percentiles}")

    def describe(self) -> str:
        lo, hi = self.percentiles
        return f"foreground percentiles {lo:g} / {hi:g}" + ("" if self.declared else " (assumed)")


@dataclass
class SliceGeometry:
    """How an axial slice becomes the network's ``image_size`` x ``image_size`` frame (module docstring)."""

    image_size: int = 256
    framing: str = "spacing"
    pixdim: tuple[float, float] | None = (1.0, 1.0)
    axcodes: str = "PLS"
    context_slices: int = 0
    frame_by: str = "head"

    def __post_init__(self) -> None:
        _choice(self.frame_by, FRAME_BY, "geometry.frame_by")
        self.image_size = int(self.image_size)
        if self.image_size < 8:
            raise ValueError(f"geometry.image_size must be >= 8, got {self.image_size}")
        _choice(self.framing, FRAMINGS, "geometry.framing")
        if self.framing == "spacing":
            if self.pixdim is None:
                raise ValueError("geometry.framing 'spacing' needs pixdim (in-plane mm)")
            self.pixdim = _pair(self.pixdim, "geometry.pixdim")
            if min(self.pixdim) <= 0:
                raise ValueError(f"geometry.pixdim must be positive, got {self.pixdim}")
        elif self.pixdim is not None:
            self.pixdim = None  # only the "spacing" framing has a fixed pixel size
        if len(self.axcodes) != 3 or self.axcodes[2].upper() not in "SI":
            raise ValueError(f"geometry.axcodes {self.axcodes!r} must put the axial (I/S) axis last")
        self.context_slices = int(self.context_slices)
        if self.context_slices < 0:
            raise ValueError(f"geometry.context_slices must be >= 0, got {self.context_slices}")

    @property
    def channels(self) -> int:
        """Input channels of a generator: the 2k + 1 slices of its context."""
        return 2 * self.context_slices + 1

    def describe(self) -> str:
        how = {"spacing": f"resampled to {self.pixdim[0]:g} x {self.pixdim[1]:g} mm, centre crop/pad"
               if self.pixdim else "",
               "fit": "field of view fitted (longer side), padded" if self.frame_by == "field_of_view" else
               "fitted (2D images: field of view; volumes: head at the training head size), padded",
               "crop": "native pixel size, centre crop/pad", "resize_crop": "shorter side scaled, centre crop"}
        ctx = f", {self.channels} slices of context" if self.context_slices else ""
        return f"{self.image_size} x {self.image_size} px, {how[self.framing]}{ctx}"


@dataclass
class TrainingReference:
    """What the training images of one domain looked like, measured when the contract was built (on a subsample:
    ``images`` of them; whole volumes are the unit for models trained on volumes). ``head_extent_px``: median
    longer side of the head's bounding box in the frame, with its 25th / 75th percentiles ``head_extent_spread``
    (and ``head_extent_mm`` where the pixel size is known); ``quantiles``: in-head [-1, 1] values at
    ``QUANTILE_LEVELS``; ``halves_distance``: 1-Wasserstein distance between the in-head values of two random halves
    of those images (the yardstick of the domain gap); ``image_distance_p95``: the 95th percentile of single
    training images' distances to all of them (what one image of the training set itself may reach: the "far from
    training" limit)."""

    head_extent_px: float | None = None
    head_extent_spread: tuple[float, float] | None = None
    head_extent_mm: float | None = None
    quantiles: tuple[float, ...] | None = None
    halves_distance: float | None = None
    images: int = 0
    image_distance_p95: float | None = None

    def __post_init__(self) -> None:
        if self.head_extent_spread is not None:
            self.head_extent_spread = _pair(self.head_extent_spread, "head_extent_spread")
        if self.quantiles is not None:
            self.quantiles = tuple(float(q) for q in self.quantiles)
            q = self.quantiles
            if len(q) != len(QUANTILE_LEVELS) or any(b < a for a, b in zip(q, q[1:], strict=False)):
                raise ValueError(f"training quantiles must be {len(QUANTILE_LEVELS)} non-decreasing values")

    def landmarks(self) -> tuple[float, ...] | None:
        """The Nyul-Udupa landmarks (values at ``NYUL_LEVELS``), None when not recorded."""
        if self.quantiles is None:
            return None
        return tuple(self.quantiles[QUANTILE_LEVELS.index(level)] for level in NYUL_LEVELS)


@dataclass
class NetworkSpec:
    """How the generators are built (``ctmri_monai.networks.define_generator`` arguments)."""

    backbone: str = "resnet"
    ngf: int = 64
    n_blocks: int = 9
    num_downs: int = 8
    in_channels: int = 1
    out_channels: int = 1


@dataclass
class ModelSpec:
    """The contract of a trained model (module docstring). ``layout``: what it was trained on, "images" (2D
    image files) or "volumes"; ``notes``: assumptions made when the contract was derived (logged where used)."""

    network: NetworkSpec = field(default_factory=NetworkSpec)
    ct: CTIntensity = field(default_factory=CTIntensity)
    mri: MRIIntensity = field(default_factory=MRIIntensity)
    geometry: SliceGeometry = field(default_factory=SliceGeometry)
    layout: str = "volumes"
    notes: list[str] = field(default_factory=list)
    version: int = SPEC_VERSION
    training: dict[str, TrainingReference] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _choice(self.layout, (*LAYOUTS, "unknown"), "layout")
        self.training = {k: v if isinstance(v, TrainingReference) else TrainingReference(**v)
                         for k, v in dict(self.training).items()}
        if self.network.in_channels != self.geometry.channels:
            raise ValueError(f"network.in_channels {self.network.in_channels} != 2 * context_slices + 1 = "
                             f"{self.geometry.channels}")

    # -------------------------------------------------------------------------------------------- access
    def domain(self, name: str) -> CTIntensity | MRIIntensity:
        """The intensity contract of ``name`` ("ct" or "mri")."""
        if name not in ("ct", "mri"):
            raise ValueError(f"unknown domain {name!r}; expected 'ct' or 'mri'")
        return self.ct if name == "ct" else self.mri

    def reference(self, name: str) -> TrainingReference:
        """What the training images of ``name`` looked like (empty when the checkpoint predates it)."""
        self.domain(name)
        return self.training.get(name, TrainingReference())

    def head_extent(self, name: str) -> float | None:
        """The training head extent (frame px) a volume of ``name`` is framed to: "fit" models framing by the head
        that recorded it; None frames the field of view (`ctmri_monai.transforms.spatial`)."""
        if self.geometry.framing != "fit" or self.geometry.frame_by != "head":
            return None
        return self.reference(name).head_extent_px

    def generator_kwargs(self) -> dict[str, Any]:
        return asdict(self.network)

    def describe_network(self) -> str:
        """The architecture in one line, for errors about weights that do not fit."""
        n = self.network
        return (f"backbone={n.backbone}, ngf={n.ngf}, in/out channels {n.in_channels}/{n.out_channels}, "
                f"image_size={self.geometry.image_size}")

    def describe(self) -> str:
        """One paragraph for logs and reports."""
        geometry = self.geometry
        if geometry.frame_by == "head" and not any(self.head_extent(name) for name in ("ct", "mri")):
            geometry = replace(geometry, frame_by="field_of_view")  # no head size to frame volumes by
        mri = self.mri.describe()
        if not self.mri.declared and self.reference("mri").landmarks():
            mri += ", then standardised onto the training landmarks (Nyul-Udupa)"
        return (f"trained on {self.layout}; CT: {self.ct.describe()} (stored as {self.ct.stored_as}); MRI: "
                f"{mri}; slices: {geometry.describe()}")

    # ------------------------------------------------------------------------------- checkpoint state
    def state_dict(self) -> dict[str, Any]:
        """Plain data (lists, numbers, strings) for ``torch.save`` and ``weights_only`` loading."""
        state = asdict(self)
        for part, key in (("ct", "window"), ("mri", "percentiles"), ("geometry", "pixdim")):
            if state[part][key] is not None:
                state[part][key] = list(state[part][key])
        for ref in state["training"].values():
            for key in ("head_extent_spread", "quantiles"):
                if ref[key] is not None:
                    ref[key] = list(ref[key])
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace this spec with ``state`` (a current or a version-1 spec: see `from_state`)."""
        other = ModelSpec.from_state(state)
        for name in ("network", "ct", "mri", "geometry", "layout", "notes", "version", "training"):
            setattr(self, name, getattr(other, name))

    @classmethod
    def from_state(cls, state: Mapping[str, Any] | None) -> ModelSpec:
        """A spec from a checkpoint's ``model_spec`` (nothing: the defaults).

        Version 1 (flat keys, written before the data contract) is converted with what can be derived: its
        architecture, MRI percentiles and the geometry its conversion used (in-plane ``pixdim``, crop / pad),
        recorded as an assumption; its CT window is unknown, because a version-1 checkpoint does not say whether
        that window was used (volumes) or not (2D images)."""
        if not state:
            return cls()
        state = dict(state)
        if int(state.get("version", 1)) >= 2:
            notes = list(state.get("notes", []))
            if "training" not in state and OLD_CONTRACT_NOTE not in notes:
                notes.append(OLD_CONTRACT_NOTE)
            return cls(network=NetworkSpec(**state.get("network", {})), ct=CTIntensity(**state.get("ct", {})),
                       mri=MRIIntensity(**state.get("mri", {})), geometry=SliceGeometry(**state.get("geometry", {})),
                       layout=state.get("layout", "volumes"), notes=notes,
                       version=int(state["version"]), training=dict(state.get("training") or {}))
        network = NetworkSpec(**{k: state[k] for k in asdict(NetworkSpec()) if k in state})
        pixdim = state.get("pixdim", (1.0, 1.0))
        notes = ["version-1 checkpoint (written before the data contract): its layout and CT window are unknown; "
                 f"assumed the geometry its conversion used: {pixdim} mm in-plane, centre crop/pad"]
        legacy_window = state.get("ct_window")
        if legacy_window is not None:
            notes.append(f"its config named ct_window {list(legacy_window)}, used only if it was trained on volumes")
        return cls(network=network, ct=CTIntensity(window=None, stored_as="hu"),
                   mri=MRIIntensity(percentiles=state.get("mri_percentiles", (0.5, 99.5)), declared=False),
                   geometry=SliceGeometry(image_size=state.get("image_size", 256), framing="spacing",
                                          pixdim=pixdim, context_slices=(network.in_channels - 1) // 2),
                   layout="unknown", notes=notes, version=1)

    # ------------------------------------------------------------------------------------- overrides
    def with_overrides(self, ct_window: Any = None, framing: str | None = None, pixdim: Any = None,
                       mri_percentiles: Any = None, frame_by: str | None = None) -> ModelSpec:
        """A copy with explicit overrides of the recorded contract, each logged as a warning (None: keep)."""
        spec = replace(self, notes=list(self.notes))
        changes: list[str] = []
        if ct_window is not None:
            spec.ct = replace(self.ct, window=_pair(ct_window, "ct_window"))
            changes.append(f"CT {spec.ct.describe()} replaces the recorded {self.ct.describe()}")
        if mri_percentiles is not None:
            spec.mri = replace(self.mri, percentiles=_pair(mri_percentiles, "mri_percentiles"), declared=True)
            changes.append(f"MRI {spec.mri.describe()} replaces the recorded {self.mri.describe()}")
        if framing is not None or pixdim is not None or frame_by is not None:
            new_framing = framing or ("spacing" if pixdim is not None else self.geometry.framing)
            spec.geometry = replace(self.geometry, framing=new_framing,
                                    pixdim=pixdim if pixdim is not None else self.geometry.pixdim,
                                    frame_by=frame_by or self.geometry.frame_by)
            changes.append(f"slices {spec.geometry.describe()} replaces the recorded {self.geometry.describe()}")
        for change in changes:
            logger.warning("contract override: %s", change)
            spec.notes.append(f"override: {change}")
        return spec
