"""Training on datasets larger than memory: cells streamed from a sparse-row dataset and processed chunk by chunk."""

import zlib

import numpy as np
import torch


def hash_split(cell_id: str, test_size: float) -> bool:
    """Whether a cell belongs to the test split: a stable hash of its id, so every pass and process agrees."""
    return zlib.crc32(str(cell_id).encode()) % 10_000 < test_size * 10_000


class StreamingCells(torch.utils.data.IterableDataset):
    """
    Model inputs for the cells of a streamed `datasets.IterableDataset` in the sparse-row layout (`genes` token ids,
    `expressions`, a `ClassLabel` `label`), read `chunk_size` cells at a time: gene matching, normalisation and
    the top-k cut happen in the processor, as for in-memory data. `keep(cell_id)` selects the split.
    """

    def __init__(self, cells, gene_metadata, processor, keep, chunk_size=1024, label_column="label"):
        self.cells, self.processor, self.keep = cells, processor, keep
        self.chunk_size, self.label_column = chunk_size, label_column
        token_ids = np.asarray(gene_metadata["token_id"], dtype=np.int64)
        self.gene_names = np.array([f"__no_symbol_{i}" for i in range(token_ids.max() + 1)], dtype=object)
        self.gene_names[token_ids] = np.asarray(gene_metadata["gene_symbol"], dtype=object)

    def __iter__(self):
        rows = []
        for row in self.cells:
            if self.keep(row["cell_id"]):
                rows.append(row)
            if len(rows) == self.chunk_size:
                yield from self._encode(rows)
                rows = []
        if rows:
            yield from self._encode(rows)

    def _matrix(self, rows):
        from scipy import sparse

        indptr = np.cumsum([0] + [len(row["genes"]) for row in rows])
        return sparse.csr_matrix(
            (np.concatenate([np.asarray(r["expressions"], dtype=np.float32) for r in rows]),
             np.concatenate([np.asarray(r["genes"], dtype=np.int64) for r in rows]), indptr),
            shape=(len(rows), len(self.gene_names)),
        )

    def first_cells(self, n_cells: int):
        """`(matrix, gene_names)`: the stream's first `n_cells` kept cells, e.g. to fit the processor's reference."""
        rows = []
        for row in self.cells:
            if self.keep(row["cell_id"]):
                rows.append(row)
                if len(rows) == n_cells:
                    break
        return self._matrix(rows), list(self.gene_names)

    def _encode(self, rows):
        encoded = self.processor(self._matrix(rows), gene_names=list(self.gene_names), return_tensors="pt")
        for i, row in enumerate(rows):
            item = {name: encoded[name][i] for name in ("gene_ids", "gene_values", "gene_mask")}
            if self.label_column in row:
                item["labels"] = torch.tensor(row[self.label_column], dtype=torch.long)
            yield item
