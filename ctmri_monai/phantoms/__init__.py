"""Synthetic paired brain CT / T1-MRI phantoms: the project's embedded demo data (no download).

`anatomy` builds each subject's 3D label map, `render` renders the CT (HU) and the T1-like MRI from the SAME label
map (paired voxel to voxel by construction) and their 2D display images, `write` writes the data set folder
(`make_phantoms`). Everything is deterministic from ``seed`` (subject ``i`` depends only on ``seed`` and ``i``).

Array convention: volumes are ``(X, Y, Z)`` with axial slices along the third axis; the NIfTI affine is RAS
(``+X`` right, ``+Y`` anterior, ``+Z`` superior), diagonal with ``spacing`` and the origin at the volume
centre. 2D images (PNG and DICOM pixel data) use the radiological display layout: rows run anterior ->
posterior, columns patient right -> left, i.e. ``png[row, col] == volume[X - 1 - col, Y - 1 - row, z]``
(the same as a volume reoriented to MONAI axcodes ``"PLS"`` sliced at ``[:, :, z]``).
"""

from ctmri_monai.phantoms.anatomy import LABELS, make_label_map, phantom_affine
from ctmri_monai.phantoms.render import (
    CT_PNG_WINDOW,
    MRI_PNG_PERCENTILES,
    Phantom,
    ct_to_png,
    make_subject,
    mri_to_png,
    radiological_slice,
    radiological_stack,
)
from ctmri_monai.phantoms.write import make_phantoms, n_test_subjects

__all__ = [
    "LABELS",
    "CT_PNG_WINDOW",
    "MRI_PNG_PERCENTILES",
    "Phantom",
    "make_label_map",
    "make_subject",
    "make_phantoms",
    "n_test_subjects",
    "radiological_slice",
    "radiological_stack",
    "ct_to_png",
    "mri_to_png",
    "phantom_affine",
]
