"""Data: dataset folders and cards, the contract of a model about to be trained, and unpaired datasets."""

from ctmri_monai.data.card import CARD_NAME, DatasetCard, find_card, read_card, write_card
from ctmri_monai.data.contract import spec_for_dataset
from ctmri_monai.data.folders import (
    detect_layout,
    effective_split,
    list_images,
    list_volumes,
    split_files,
    split_train_val,
)
from ctmri_monai.data.images import ImageFolderDataset
from ctmri_monai.data.unpaired import UnpairedDataset, build_unpaired_dataset, dataset_transforms
from ctmri_monai.data.volumes import VolumeSliceDataset

__all__ = [
    "CARD_NAME", "DatasetCard", "ImageFolderDataset", "UnpairedDataset", "VolumeSliceDataset",
    "build_unpaired_dataset", "dataset_transforms", "detect_layout", "effective_split", "find_card",
    "list_images", "list_volumes", "read_card", "spec_for_dataset", "split_files", "split_train_val", "write_card",
]
