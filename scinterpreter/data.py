"""Reading labelled single-cell data and splitting it into the training and test cells."""

import json
import logging
from pathlib import Path

import numpy as np
import torch

from processing_scinterpreter import MODEL_INPUT_NAMES, ScInterpreterInputError

from .optional import require

logger = logging.getLogger(__name__)

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def check_h5ad(path) -> Path:
    """`path`, after a clear error if it is missing or not an AnnData (HDF5) file."""
    path = Path(path)
    if not path.is_file():
        raise ScInterpreterInputError(f"{path} does not exist: pass the path of an .h5ad file.")
    with open(path, "rb") as handle:
        if handle.read(8) != HDF5_SIGNATURE:
            raise ScInterpreterInputError(
                f"{path} is not an .h5ad file (no HDF5 signature). Save your data with `adata.write_h5ad(path)`."
            )
    return path


def read_h5ad(path, backed=None):
    """Reads an `.h5ad` file, with a clear error when the path is missing or not an AnnData file."""
    import anndata

    return anndata.read_h5ad(check_h5ad(path), backed=backed)


def check_label_column(adata, label_column: str):
    """The label column as strings, after checking it exists and holds at least two classes."""
    if label_column not in adata.obs.columns:
        raise ScInterpreterInputError(
            f"label column {label_column!r} is not in adata.obs; its columns are {list(adata.obs.columns)}. "
            "Pass --label_column with one of them."
        )
    labels = adata.obs[label_column].astype(str).to_numpy()
    if len(set(labels)) < 2:
        raise ScInterpreterInputError(
            f"label column {label_column!r} holds a single class ({labels[0]!r}); a classifier needs at least two."
        )
    return labels


def split_cells(adata, labels, split_file=None, fold=None, test_size=0.2, seed=0):
    """
    Training and test cell positions. With `split_file` (the JSON format of `../shared/data/scrna/splits`):
    its `train` / `test` cell names, or, for a leave-one-batch-out file, the cells of batch `fold` as test.
    Otherwise a stratified split (classes of one cell go to training).
    """
    if split_file is not None:
        spec = json.loads(Path(split_file).read_text())
        if "folds" in spec or "batch_key" in spec:
            batches = adata.obs[spec["batch_key"]].astype(str).to_numpy()
            if fold is None:
                raise ScInterpreterInputError(
                    f"{split_file} is a leave-one-batch-out split: pass --split_fold with one of {sorted(set(batches))}."
                )
            test = np.flatnonzero(batches == str(fold))
            train = np.flatnonzero(batches != str(fold))
        else:
            position = {name: i for i, name in enumerate(adata.obs_names)}
            missing = [name for name in spec["train"] + spec["test"] if name not in position]
            if missing:
                raise ScInterpreterInputError(
                    f"{len(missing)} cells of {split_file} are not in the data (e.g. {missing[:3]}): "
                    "is it the split of another dataset?"
                )
            train = np.array([position[name] for name in spec["train"]])
            test = np.array([position[name] for name in spec["test"]])
        return train, test
    require("train", "the stratified split (no split_file)", "sklearn")
    from sklearn.model_selection import train_test_split

    values, counts = np.unique(labels, return_counts=True)
    singletons = np.isin(labels, values[counts < 2])
    rest = np.flatnonzero(~singletons)
    train, test = train_test_split(rest, test_size=test_size, stratify=labels[rest], random_state=seed)
    return np.sort(np.concatenate([train, np.flatnonzero(singletons)])), np.sort(test)


class CellDataset(torch.utils.data.Dataset):
    """Processor outputs (and label ids) as a map-style dataset of per-cell dicts for `Trainer`: the soft tokens'
    genes and, where the processor gives them, the linear gene scores' longer list (`linear_gene_*`)."""

    def __init__(self, encoded, labels=None):
        self.features = {name: torch.as_tensor(values) for name, values in encoded.items()
                         if name in MODEL_INPUT_NAMES}
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long)

    def __len__(self):
        return len(self.features["gene_ids"])

    def __getitem__(self, index):
        item = {name: values[index] for name, values in self.features.items()}
        if self.labels is not None:
            item["labels"] = self.labels[index]
        return item
