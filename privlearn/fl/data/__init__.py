"""Federated data: NIID-Bench partitions, procedural federated sets, loaders, metrics."""

from privlearn.fl.data.datasets import (
    DATASETS,
    ArrayDataset,
    DataSpec,
    FederatedDataset,
    build_federated,
    load_centralised,
)
from privlearn.fl.data.heterogeneity import label_counts, plot_heatmap, summary
from privlearn.fl.data.partition import SCHEMES

__all__ = [
    "DATASETS",
    "SCHEMES",
    "ArrayDataset",
    "DataSpec",
    "FederatedDataset",
    "build_federated",
    "label_counts",
    "load_centralised",
    "plot_heatmap",
    "summary",
]
