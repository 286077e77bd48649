"""AnnData <-> Hugging Face `datasets`: one row per cell, in the sparse-row layout single-cell Hub datasets use.

A cell is a row with `genes` (int32 ids of its expressed genes), `expressions` (their values, float32), the label as
a `ClassLabel` column and any chosen `obs` columns; a separate `gene_metadata` table maps gene ids (`token_id`) to
`gene_symbol` (and `ensembl_id` where known). Tahoe-100M on the Hub is read as published: its rows have no `cell_id`
(a cell is then named by its row, or in a stream by a hash of its genes and values), its label is a plain string
column (e.g. `cell_line_id`, chosen with `label_column`), and each row starts with the special `<cls>` token
(expression -2), which, like `<pad>` and any other token without a gene symbol, is dropped.

    ds = anndata_to_dataset(adata, label_column="cell_type")   # DatasetDict: "cells" and "gene_metadata"
    ds.save_to_disk("my_cells")          # or ds.push_to_hub("org/my_cells")
    adata = dataset_to_anndata(load_dataset("org/my_cells"))   # back, with labels in obs
"""

from pathlib import Path

import numpy as np

from .optional import require

CELLS, GENE_METADATA = "cells", "gene_metadata"


def anndata_to_dataset(adata, label_column=None, obs_columns=(), layer=None, chunk_size=4096):
    """A `DatasetDict` with a `cells` split (one row per cell) and a `gene_metadata` split (one row per gene)."""
    require("train", "anndata_to_dataset", "datasets")
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Sequence, Value

    from processing_scinterpreter import ScInterpreterInputError

    columns = list(obs_columns)
    if label_column is not None:
        if label_column not in adata.obs.columns:
            raise ScInterpreterInputError(f"label column {label_column!r} is not in adata.obs "
                                          f"(columns: {list(adata.obs.columns)}).")
        columns = [label_column] + [c for c in columns if c != label_column]
    missing = [c for c in columns if c not in adata.obs.columns]
    if missing:
        raise ScInterpreterInputError(f"obs columns {missing} are not in adata.obs (columns: {list(adata.obs.columns)}).")
    matrix = adata.X if layer is None else adata.layers[layer]
    features = {"cell_id": Value("string"), "genes": Sequence(Value("int32")), "expressions": Sequence(Value("float32"))}
    names = None
    if label_column is not None:
        names = sorted(adata.obs[label_column].astype(str).unique())
        features["label"] = ClassLabel(names=names)
    for column in columns[1 if label_column else 0:]:
        features[column] = Value("string")

    def rows():
        index = {name: i for i, name in enumerate(names or [])}
        for start in range(0, adata.n_obs, chunk_size):
            chunk = matrix[start : start + chunk_size]
            chunk = chunk.tocsr() if hasattr(chunk, "tocsr") else _dense_to_csr(np.asarray(chunk))
            obs = adata.obs.iloc[start : start + chunk_size]
            for i in range(chunk.shape[0]):
                lo, hi = chunk.indptr[i], chunk.indptr[i + 1]
                row = {"cell_id": str(obs.index[i]), "genes": chunk.indices[lo:hi].astype(np.int32),
                       "expressions": chunk.data[lo:hi].astype(np.float32)}
                if label_column is not None:
                    row["label"] = index[str(obs[label_column].iloc[i])]
                for column in columns[1 if label_column else 0:]:
                    row[column] = str(obs[column].iloc[i])
                yield row

    cells = Dataset.from_generator(rows, features=Features(features))
    genes = {"token_id": list(range(adata.n_vars)), "gene_symbol": [str(g) for g in adata.var_names]}
    for column in ("gene_ids", "ensembl_id", "gene_id"):
        if column in adata.var.columns:
            genes["ensembl_id"] = adata.var[column].astype(str).tolist()
            break
    return DatasetDict({CELLS: cells, GENE_METADATA: Dataset.from_dict(genes)})


def _dense_to_csr(dense):
    from scipy import sparse

    return sparse.csr_matrix(dense)


def is_special_token(symbol) -> bool:
    """Tokens that name no gene (`<cls>`, `<pad>`, missing symbols): their entries are dropped from cells."""
    return not isinstance(symbol, str) or not symbol or (symbol.startswith("<") and symbol.endswith(">"))


def gene_columns(gene_metadata):
    """`(symbols, column_of)`: the genes' symbols in matrix-column order, and each token id's column (-1 for
    special tokens and unused ids)."""
    token_ids = np.asarray(gene_metadata["token_id"], dtype=np.int64)
    symbols = np.asarray(gene_metadata["gene_symbol"], dtype=object)
    is_gene = np.array([not is_special_token(symbol) for symbol in symbols], dtype=bool)
    column_of = np.full(token_ids.max() + 1, -1, dtype=np.int64)
    column_of[token_ids[is_gene]] = np.arange(int(is_gene.sum()))
    return symbols[is_gene], column_of, is_gene


def cell_entries(row, column_of):
    """`(columns, values)` of one sparse row, special tokens dropped."""
    columns = column_of[np.asarray(row["genes"], dtype=np.int64)]
    values = np.asarray(row["expressions"], dtype=np.float32)
    keep = columns >= 0
    return columns[keep], values[keep]


def dataset_to_anndata(dataset, gene_metadata=None, label_column="label", max_cells=None):
    """
    An AnnData from a cells dataset (`genes` / `expressions` list columns) and its gene table. `dataset` may be the
    `DatasetDict` that `anndata_to_dataset` or `load_dataset` returns (its `cells` / `train` split and
    `gene_metadata`). A `ClassLabel` label becomes its names in `obs["cell_type"]`; other scalar columns go to `obs`.
    """
    import anndata
    import pandas as pd
    from scipy import sparse

    if hasattr(dataset, "keys"):
        if gene_metadata is None and GENE_METADATA in dataset:
            gene_metadata = dataset[GENE_METADATA]
        split = CELLS if CELLS in dataset else next(k for k in dataset.keys() if k != GENE_METADATA)
        dataset = dataset[split]
    if gene_metadata is None:
        raise ValueError("the dataset has no gene_metadata table: pass gene_metadata= (token_id -> gene_symbol).")
    symbols, column_of, is_gene = gene_columns(gene_metadata)
    if max_cells is not None:
        dataset = dataset.select(range(min(max_cells, len(dataset))))
    indptr, indices, data, obs = [0], [], [], {}
    scalar_columns = [c for c, f in dataset.features.items() if c not in ("genes", "expressions")
                      and not hasattr(f, "feature")]
    for row in dataset:
        columns, values = cell_entries(row, column_of)
        indices.append(columns)
        data.append(values)
        indptr.append(indptr[-1] + len(columns))
        for column in scalar_columns:
            obs.setdefault(column, []).append(row[column])
    matrix = sparse.csr_matrix((np.concatenate(data), np.concatenate(indices), np.array(indptr)),
                               shape=(len(indptr) - 1, len(symbols)))
    obs = pd.DataFrame(obs, index=pd.RangeIndex(len(indptr) - 1))
    label_feature = dataset.features.get(label_column)
    if label_feature is not None and hasattr(label_feature, "int2str"):
        obs["cell_type"] = label_feature.int2str(obs.pop(label_column).tolist())
    if "cell_id" in obs:
        obs = obs.set_index("cell_id")
    obs.index = obs.index.astype(str)
    var = pd.DataFrame(index=pd.Index(symbols.astype(str), name="gene_symbol"))
    if "ensembl_id" in gene_metadata.column_names:
        var["ensembl_id"] = np.asarray(gene_metadata["ensembl_id"], dtype=object)[is_gene]
    var_names_unique = ~var.index.duplicated()
    adata = anndata.AnnData(X=matrix, obs=obs, var=var)
    return adata if var_names_unique.all() else adata[:, var_names_unique].copy()


DATASET_CARD = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: cells/*.parquet
- config_name: gene_metadata
  data_files:
  - split: train
    path: gene_metadata/*.parquet
tags:
- single-cell
- scRNA-seq
---

# {title}

Single cells in the sparse-row layout: config `default` (one row per cell: `genes` ids, `expressions`, `label`
and metadata) and config `gene_metadata` (`token_id` -> `gene_symbol`). Made with scInterpreter's
`anndata_to_dataset`; load with `load_dataset(repo)` and `load_dataset(repo, "gene_metadata")`.
"""


def save_cells(dataset, folder, title="single-cell dataset"):
    """
    Writes a `DatasetDict` from `anndata_to_dataset` as a Hub-style dataset folder: parquet files for the two configs
    and a card declaring them. `load_dataset(folder)` reads it, and so does `load_dataset("org/name")` once the
    folder is uploaded (`push_cells_to_hub`).
    """
    folder = Path(folder)
    for config in (CELLS, GENE_METADATA):
        (folder / config).mkdir(parents=True, exist_ok=True)
        dataset[config].to_parquet(str(folder / config / "train-00000-of-00001.parquet"))
    (folder / "README.md").write_text(DATASET_CARD.format(title=title))
    return folder


def push_cells_to_hub(dataset, repo_id, private=False, token=None):
    """Uploads a dataset made by `anndata_to_dataset` to the Hub, in the folder layout of `save_cells`."""
    import tempfile

    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        save_cells(dataset, tmp, title=repo_id)
        api.upload_folder(folder_path=tmp, repo_id=repo_id, repo_type="dataset")


def load_cells(name_or_path, streaming=False):
    """
    The cells and gene table of a Hub dataset id, a `save_cells` folder or a `save_to_disk` folder, as a
    `DatasetDict` with `cells` and `gene_metadata` (cells streamed when `streaming`).
    """
    require("train", "load_cells", "datasets")
    from datasets import DatasetDict, IterableDatasetDict, load_dataset, load_from_disk

    path = Path(str(name_or_path))
    if path.is_dir() and (path / "dataset_dict.json").is_file():
        return load_from_disk(str(path))
    cells = load_dataset(str(name_or_path), split="train", streaming=streaming)
    genes = load_dataset(str(name_or_path), GENE_METADATA, split="train")
    return (IterableDatasetDict if streaming else DatasetDict)({CELLS: cells, GENE_METADATA: genes})
