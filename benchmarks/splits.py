"""The shared datasets and their fixed splits (../shared/data/scrna), as every benchmark reads them."""

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scinterpreter.data import check_label_column, read_h5ad, split_cells  # noqa: E402

SHARED = REPO.parent / "shared" / "data" / "scrna"
DATASETS = ["baron_human_pancreas", "baron_mouse_pancreas", "mouse_immune_actinn", "pbmc3k_clustifyr",
            "pbmc4k_soupx", "pbmc68k_reduced_scanpy", "pbmc_3batch_symphony"]
LOBO_FOLDS = ["3pv1", "3pv2", "5p"]


def splits(names=None):
    """(dataset, split, split file, fold): the 7 fixed splits and the 3 leave-one-batch-out folds of PBMC 3-batch.
    `names` keeps the splits whose dataset or split name (e.g. `lobo_3pv1`) is listed."""
    every = [(name, "fixed", SHARED / "splits" / f"{name}.json", None) for name in DATASETS]
    every += [("pbmc_3batch_symphony", f"lobo_{fold}", SHARED / "splits" / "pbmc_3batch_symphony.lobo.json", fold)
              for fold in LOBO_FOLDS]
    return [s for s in every if not names or s[0] in names or s[1] in names]


def load_split(dataset, split_file, fold=None):
    """`(adata, labels, train, test)`: the dataset, its labels as strings and the train / test cell positions."""
    adata = read_h5ad(SHARED / f"{dataset}.h5ad")
    label_key = json.loads(Path(split_file).read_text()).get("label_key", "cell_type")
    labels = check_label_column(adata, label_key)
    train, test = split_cells(adata, labels, split_file, fold)
    return adata, labels, train, test
