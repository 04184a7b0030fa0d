"""A calm terminal: silence the library messages known to be harmless here, and nothing else.

* MONAI's optional nvImageCodec DICOM decoder is absent on CPU installs: it logs a warning and warns each time a
  reader is built, and pydicom's own decoders are used (the project reads DICOM through SimpleITK anyway).
* MONAI's bundle runner warns that configs are evaluated as Python for every config it parses; the project runs
  its own bundle in-process here (the README's Safety section says to run only trusted configs).
* ``torch.jit`` deprecation warnings from the TorchScript FID network, MONAI's scripted helpers and the
  TorchScript export (`ctmri export --format torchscript`).
"""

from __future__ import annotations

import logging
import warnings

__all__ = ["quiet_known_warnings"]

_MESSAGES = (
    r"NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register",
    r"parsing config_file .* Only proceed if this config is from a source you trust",
    r"`torch\.jit\.(script|interface|trace|save|load)` is deprecated",
)


def quiet_known_warnings() -> None:
    """Install the filters (idempotent); call it at the start of a command or in a config's ``initialize``."""
    for message in _MESSAGES:
        warnings.filterwarnings("ignore", message=message)
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
