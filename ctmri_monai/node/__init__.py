"""The DICOM node (``ctmri serve``): receive series by C-STORE, convert them through the `ConversionService`, send
the derived series on; a spool folder with a SQLite journal makes it restartable."""

from ctmri_monai.node.journal import Journal
from ctmri_monai.node.sender import Destination, send_series
from ctmri_monai.node.server import Node, NodeConfig
from ctmri_monai.node.spool import Spool

__all__ = ["Destination", "Journal", "Node", "NodeConfig", "Spool", "send_series"]
