"""The project's error hierarchy: every refusal names the file (or setting) and the problem.

``CtmriError`` (a ``ValueError``) is the root. ``InputError`` is a bad input file or folder (unreadable, 2D where
3D is expected, NaN, mixed DICOM series...) or an output that cannot be written; ``VolumeTooLargeError`` a volume
over the voxel limit; ``ContractError`` an input or a model that the model's data contract cannot describe (a
CT window nobody knows, values that are not Hounsfield units, a head that does not fit the model's frame).
"""

from __future__ import annotations

import os

__all__ = ["ContractError", "CtmriError", "InputError", "VolumeTooLargeError", "find_input_error"]


class CtmriError(ValueError):
    """Root of the project's errors: ``"<path or setting>: <problem>"``."""

    def __init__(self, path: str | os.PathLike | None, problem: str | None = None) -> None:
        if problem is None:  # one-argument form: the whole message
            self.path, self.problem = None, str(path)
            super().__init__(self.problem)
        else:
            self.path, self.problem = str(path), problem
            super().__init__(f"{path}: {problem}")


class InputError(CtmriError):
    """A bad input (or an output that cannot be written): the message names the path and the problem."""


class VolumeTooLargeError(InputError):
    """A volume with more voxels than the configured ``max_voxels``."""


class ContractError(CtmriError):
    """An input or a model the data contract cannot describe; the message says which option supplies what is
    missing."""


def find_input_error(exc: BaseException | None) -> CtmriError | None:
    """The ``CtmriError`` behind ``exc`` (MONAI wraps transform errors in ``RuntimeError``), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, CtmriError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
