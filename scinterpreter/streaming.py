"""Training on datasets larger than memory: cells streamed from a sparse-row dataset and processed chunk by chunk."""

import zlib

import numpy as np
import torch


def hash_split(cell_id: str, test_size: float) -> bool:
    """Whether a cell belongs to the test split: a stable hash of its id, so every pass and process agrees."""
    return zlib.crc32(str(cell_id).encode()) % 10_000 < test_size * 10_000


def cell_key(row) -> str:
    """A cell's name: its `cell_id`, or, where rows have none (Tahoe-100M), a hash of its genes and values, which
    stays the same whatever order the stream is read in."""
    if "cell_id" in row:
        return str(row["cell_id"])
    genes = np.asarray(row["genes"], dtype=np.int64).tobytes()
    return f"{zlib.crc32(genes):08x}{zlib.crc32(np.asarray(row['expressions'], dtype=np.float32).tobytes()):08x}"


class StreamingCells(torch.utils.data.IterableDataset):
    """
    Model inputs for the cells of a streamed `datasets.IterableDataset` in the sparse-row layout (`genes` token ids,
    `expressions`, a label column: `ClassLabel` ids, or strings mapped by `label2id`), read `chunk_size` cells at a
    time: gene matching, normalisation and the top-k cut happen in the processor, as for in-memory data.
    `keep(cell_key)` selects the split; special tokens (`<cls>`, `<pad>`) are dropped. `first_cells` reads raw cells,
    with no `processor` needed.
    """

    def __init__(self, cells, gene_metadata, processor, keep, chunk_size=1024, label_column="label", label2id=None):
        from .hf_datasets import gene_columns

        self.cells, self.processor, self.keep = cells, processor, keep
        self.chunk_size, self.label_column, self.label2id = chunk_size, label_column, label2id
        symbols, self.column_of, _ = gene_columns(gene_metadata)
        self.gene_names = list(symbols)

    def __iter__(self):
        rows = []
        for row in self.cells:
            if self.keep(cell_key(row)):
                rows.append(row)
            if len(rows) == self.chunk_size:
                yield from self._encode(rows)
                rows = []
        if rows:
            yield from self._encode(rows)

    def _matrix(self, rows):
        from scipy import sparse

        from .hf_datasets import cell_entries

        entries = [cell_entries(row, self.column_of) for row in rows]
        indptr = np.cumsum([0] + [len(columns) for columns, _ in entries])
        return sparse.csr_matrix(
            (np.concatenate([values for _, values in entries]), np.concatenate([columns for columns, _ in entries]),
             indptr),
            shape=(len(rows), len(self.gene_names)),
        )

    def first_cells(self, n_cells: int):
        """`(matrix, gene_names)`: the stream's first `n_cells` kept cells, e.g. to fit the processor's reference."""
        rows = []
        for row in self.cells:
            if self.keep(cell_key(row)):
                rows.append(row)
                if len(rows) == n_cells:
                    break
        return self._matrix(rows), list(self.gene_names)

    def _encode(self, rows):
        encoded = self.processor(self._matrix(rows), gene_names=list(self.gene_names), return_tensors="pt")
        # A panel's list is as wide as the chunk's busiest cell: padded to the panel, so that batches can span chunks.
        width = self.processor.linear_list_width
        for name in ("linear_gene_ids", "linear_gene_values", "linear_gene_mask"):
            if name in encoded and encoded[name].shape[1] < width:
                encoded[name] = torch.nn.functional.pad(encoded[name], (0, width - encoded[name].shape[1]))
        for i, row in enumerate(rows):
            item = {name: values[i] for name, values in encoded.items()}
            if self.label_column in row:
                label = row[self.label_column]
                label = self.label2id.get(str(label), -100) if self.label2id is not None else label
                item["labels"] = torch.tensor(label, dtype=torch.long)
            yield item
