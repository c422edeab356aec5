"""Datasets in canonical form: the synthetic multi-view set and loaders for the real FER datasets."""

from runtime.data.base import CANONICAL_CLASSES, DatasetIndex, Record, canonical_classes, load_image, stratified_split
from runtime.data.registry import list_datasets, load_dataset, register_dataset

__all__ = [
    "CANONICAL_CLASSES",
    "DatasetIndex",
    "Record",
    "canonical_classes",
    "list_datasets",
    "load_dataset",
    "load_image",
    "register_dataset",
    "stratified_split",
]
