"""``data=folder``'s names where earlier code imports them: the DataModule is
:class:`ceod.data.datamodule.DefectDataModule` (its default source is the folder layout,
:class:`ceod.data.discovery.FolderTree`); the Dataset is :class:`ceod.data.dataset.SegmentedImageDataset`."""

from ceod.data.datamodule import MANIFEST_NAME
from ceod.data.datamodule import DefectDataModule as FolderDataModule
from ceod.data.dataset import SegmentedImageDataset

__all__ = ["FolderDataModule", "SegmentedImageDataset", "MANIFEST_NAME"]
