"""Annotate `.h5ad` files of any size: read in chunks (backed mode), write results as they come, resume after a kill.

    python -m scinterpreter.annotate cells.h5ad --model outputs/scinterpreter --out cells_annotated/

The output folder holds, per chunk of cells, `chunk_NNNNN.tsv` (cell, label, score) and
`chunk_NNNNN.safetensors` (cell embeddings and every cell type's probability), plus `progress.json` (with the
cell types' order), rewritten atomically after each chunk. A rerun with the same arguments skips the chunks already
written, so a killed job loses at most the chunk in flight and redoes no finished cell. `read_annotations(out)` and
`read_probabilities(out)` gather the results; `--write_h5ad` adds them to a copy of the input as the pipeline does:
`obs[key_added]`, `obs[key_added + "_score"]`, `obsm[key_added + "_probabilities"]`, `obsm["X_" + key_added]` and
`uns[key_added]` (the pipeline's record: labels, model, threshold, calibration, gene match, scinterpreter version).
"""

import argparse
import inspect
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file
from transformers.utils.logging import tqdm

from pipeline_scinterpreter import CALL_DEFAULTS, annotation_keys, annotation_record, taken_annotation_keys

logger = logging.getLogger(__name__)

PROGRESS = "progress.json"
# Bumped when what a folder holds changes, so that a folder written by an older version is not resumed.
# 3: progress.json holds the whole `uns` record (annotation_record), not only part of it.
CHUNK_FORMAT = 3
# What progress.json holds about the run itself; the rest of it is the `uns[key_added]` record.
RUN_KEYS = ("source", "n_cells", "chunk_size", "format", "chunks_done")


def _atomic_write(path: Path, text: str):
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


class H5adCells:
    """
    The cells of an `.h5ad` file read straight from disk, a slice of rows at a time, from `X` or `layers[layer]`
    (anndata's backed mode keeps only `X` on disk and reads every layer whole), with the cell and gene names.
    """

    def __init__(self, path, layer=None):
        import h5py
        from anndata.io import read_elem, sparse_dataset

        from processing_scinterpreter import ScInterpreterInputError

        from .data import check_h5ad

        self.file = h5py.File(check_h5ad(path), "r")
        if layer is None:
            element = self.file["X"]
        else:
            layers = self.file.get("layers", {})
            if layer not in layers:
                raise ScInterpreterInputError(f"layer {layer!r} is not in {path} (layers: {sorted(layers)}): pass one "
                                              "of them, or leave --layer out to read X.")
            element = layers[layer]
        self.matrix = sparse_dataset(element) if isinstance(element, h5py.Group) else element
        self.n_obs = self.matrix.shape[0]
        index = lambda group: read_elem(group[group.attrs["_index"]]).astype(str)  # noqa: E731
        self.obs_names, self.var_names = index(self.file["obs"]), index(self.file["var"])

    def __getitem__(self, rows: slice):
        return self.matrix[rows]

    def close(self):
        self.file.close()


def annotate_h5ad(path, model, out, chunk_size=4096, batch_size=None, threshold=None, layer=None, max_chunks=None,
                  compile_backbone=None):
    """
    Annotates the cells of `path` chunk by chunk without loading the whole matrix.

    Args:
        path: the `.h5ad` file (opened in backed mode).
        model: a model folder / Hub id, or a `cell-annotation` pipeline.
        out: output folder (created; reused to resume).
        chunk_size (`int`): cells read and written at a time.
        batch_size, threshold (*optional*): as the pipeline takes them; by default those the pipeline was built with
            (its `CALL_DEFAULTS`, 64 cells and 0.0, for a model folder).
        max_chunks (`int`, *optional*): stop after this many new chunks (for tests and trial runs).
        compile_backbone (`bool`, *optional*): run the backbone under `torch.compile`; by default when the file
            holds at least the pipeline's `compile_min_cells` (20,000) cells.

    Returns:
        `dict` with `n_cells`, `n_done`, `cells_per_second` of this call.
    """
    from transformers import pipeline

    annotate = model if callable(model) else pipeline("cell-annotation", model=str(model), trust_remote_code=True)
    # A pipeline built with its own options keeps them unless this call names others.
    built_with = {**getattr(annotate, "_forward_params", {}), **getattr(annotate, "_postprocess_params", {})}
    threshold = threshold if threshold is not None else built_with.get("threshold", CALL_DEFAULTS["threshold"])
    batch_size = batch_size if batch_size is not None else built_with.get("batch_size", CALL_DEFAULTS["batch_size"])
    cells = H5adCells(path, layer)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n_cells = cells.n_obs
    n_chunks = (n_cells + chunk_size - 1) // chunk_size
    progress_file = out / PROGRESS
    genes = list(cells.var_names)
    # The record the pipeline writes into uns for an AnnData in memory, built by the same function.
    settings = {"source": str(Path(path).resolve()), "n_cells": n_cells, "chunk_size": chunk_size,
                "format": CHUNK_FORMAT, **annotation_record(annotate.model, annotate.processor, genes, threshold)}
    done = 0
    if progress_file.is_file():
        from processing_scinterpreter import ScInterpreterInputError

        progress = json.loads(progress_file.read_text())
        written_format = progress.get("format", 1)  # the first format wrote no number
        if written_format != CHUNK_FORMAT:
            # Checked first: a folder of another format differs from `settings` even for the same run, and says why.
            version = "an older" if written_format < CHUNK_FORMAT else "a newer"
            raise ScInterpreterInputError(
                f"{out} holds results written by {version} scInterpreter (chunk format {written_format}, this version "
                f"writes {CHUNK_FORMAT}), which this version does not resume; use a new --out folder."
            )
        if {key: progress.get(key) for key in settings} != settings:
            raise ScInterpreterInputError(f"{out} holds results of another run ({progress_file}); use a new --out "
                                          "folder.")
        done = progress["chunks_done"]
        logger.info(f"Resuming: {done} of {n_chunks} chunks already annotated in {out}")
    started, annotated = time.perf_counter(), 0
    bar = tqdm(total=n_cells, initial=min(done * chunk_size, n_cells), unit="cells", desc="Annotating",
               dynamic_ncols=True)
    if compile_backbone is None:
        compile_backbone = n_cells >= getattr(annotate, "compile_min_cells", float("inf"))
    options = {}
    if compile_backbone:
        parameters = inspect.signature(annotate.__call__).parameters
        # Older pipelines name each option; newer ones take them as **kwargs, compile_backbone among them.
        if "compile_backbone" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            options["compile_backbone"] = True
        else:
            logger.warning("This model folder's pipeline code predates compile_backbone: annotating uncompiled.")
    for chunk in range(done, n_chunks):
        if max_chunks is not None and chunk - done >= max_chunks:
            break
        start, stop = chunk * chunk_size, min((chunk + 1) * chunk_size, n_cells)
        rows = cells[start:stop]
        results = annotate(rows, gene_names=genes, batch_size=batch_size, threshold=threshold, show_progress=False,
                           **options)
        names = cells.obs_names[start:stop]
        lines = [f"{cell}\t{r['label']}\t{r['score']:.6f}" for cell, r in zip(names, results)]
        (out / f"chunk_{chunk:05d}.tsv").write_text("cell\tlabel\tscore\n" + "\n".join(lines) + "\n")
        save_file({"cell_embeddings": np.ascontiguousarray(results.embeddings),
                   "probabilities": np.ascontiguousarray(results.probabilities)}, out / f"chunk_{chunk:05d}.safetensors")
        _atomic_write(progress_file, json.dumps({**settings, "chunks_done": chunk + 1}))
        annotated += stop - start
        bar.update(stop - start)
    bar.close()
    cells.close()
    seconds = time.perf_counter() - started
    n_done = min(json.loads(progress_file.read_text())["chunks_done"] * chunk_size, n_cells) if progress_file.is_file() else 0
    return {"n_cells": n_cells, "n_done": n_done, "cells_annotated_now": annotated,
            "cells_per_second": annotated / seconds if seconds > 0 else 0.0}


def read_annotations(out):
    """All finished chunks of `out`: `(cells, labels, scores, embeddings)`."""
    import pandas as pd

    out = Path(out)
    n_chunks = json.loads((out / PROGRESS).read_text())["chunks_done"]
    tables = [pd.read_csv(out / f"chunk_{i:05d}.tsv", sep="\t", keep_default_na=False, dtype={"cell": str})
              for i in range(n_chunks)]
    table = pd.concat(tables, ignore_index=True)
    embeddings = np.concatenate([load_file(out / f"chunk_{i:05d}.safetensors")["cell_embeddings"]
                                 for i in range(n_chunks)])
    return table["cell"].to_numpy(), table["label"].to_numpy(), table["score"].to_numpy(np.float32), embeddings


def read_probabilities(out):
    """All finished chunks' probabilities: `(cell types in column order, cells x cell types)`, and the run's settings
    (`model`, `threshold`, `calibration_temperature`, ...: the `uns[key_added]` record, and the run's `RUN_KEYS`)."""
    out = Path(out)
    progress = json.loads((out / PROGRESS).read_text())
    probabilities = np.concatenate([load_file(out / f"chunk_{i:05d}.safetensors")["probabilities"]
                                    for i in range(progress["chunks_done"])])
    return progress["labels"], probabilities, progress


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("h5ad")
    parser.add_argument("--model", required=True, help="model folder or Hub id")
    parser.add_argument("--out", required=True, help="output folder (reused to resume)")
    parser.add_argument("--chunk_size", type=int, default=4096)
    parser.add_argument("--batch_size", type=int, default=CALL_DEFAULTS["batch_size"])
    parser.add_argument("--threshold", type=lambda value: value if value == "auto" else float(value),
                        default=CALL_DEFAULTS["threshold"],
                        help="best probability under which a cell is Unassigned, or auto (the model's fitted one)")
    parser.add_argument("--layer", default=None)
    parser.add_argument("--write_h5ad", default=None, help="also write a copy of the input with the annotation")
    parser.add_argument("--key_added", default=CALL_DEFAULTS["key_added"])
    parser.add_argument("--compile_backbone", default=None, type=lambda value: value.lower() in ("1", "true", "yes"),
                        help="true/false: run the backbone under torch.compile (default: from 20,000 cells on)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    summary = annotate_h5ad(args.h5ad, args.model, args.out, args.chunk_size, args.batch_size, args.threshold,
                            args.layer, compile_backbone=args.compile_backbone)
    print(json.dumps(summary))
    if args.write_h5ad:
        write_annotated_h5ad(args.h5ad, args.out, args.write_h5ad, args.key_added)


def write_annotated_h5ad(source, out, target, key_added=CALL_DEFAULTS["key_added"]):
    """
    A copy of `source` with `out`'s annotations added as the pipeline writes them: `obs[key_added]`,
    `obs[key_added + "_score"]`, `obsm["X_" + key_added]`, `obsm[key_added + "_probabilities"]`, `uns[key_added]`.
    The file is copied byte for byte and the new entries written into the copy a chunk at a time, so that neither
    the matrix nor the layers are ever read.
    """
    import shutil

    import h5py
    import pandas as pd
    from anndata.io import read_elem, write_elem

    from processing_scinterpreter import ScInterpreterInputError

    out, target = Path(out), Path(target)
    settings = json.loads((out / PROGRESS).read_text())
    n_chunks = -(-settings["n_cells"] // settings["chunk_size"])
    if settings["chunks_done"] < n_chunks:
        raise ValueError(f"{out} holds {settings['chunks_done']} of {n_chunks} chunks: finish the run first.")
    if target.resolve() == Path(source).resolve():
        raise ScInterpreterInputError(f"--write_h5ad {target} is the input file: write the annotated copy elsewhere.")
    keys = annotation_keys(key_added)
    with h5py.File(source, "r") as handle:
        taken = taken_annotation_keys(keys, handle["obs"], handle.get("obsm", {}), handle.get("uns", {}))
    if taken:
        raise ScInterpreterInputError(f"{source} already has {', '.join(taken)}: pass another --key_added.")
    partial = target.with_name(target.name + ".partial")
    shutil.copyfile(source, partial)
    with h5py.File(partial, "r+") as handle:
        obs = read_elem(handle["obs"])  # the cells' table, not the matrix
        tables = [pd.read_csv(out / f"chunk_{i:05d}.tsv", sep="\t", keep_default_na=False, dtype={"cell": str})
                  for i in range(n_chunks)]
        table = pd.concat(tables, ignore_index=True)
        if list(table["cell"]) != list(obs.index.astype(str)):
            raise ValueError(f"{out} annotates other cells than {source}'s (or in another order).")
        obs[keys["obs"]["label"]] = pd.Categorical(table["label"].to_numpy())
        obs[keys["obs"]["score"]] = table["score"].to_numpy(np.float32)
        write_elem(handle, "obs", obs)
        if "obsm" not in handle:
            write_elem(handle, "obsm", {})
        first = load_file(out / "chunk_00000.safetensors")
        arrays = {keys["obsm"]["embeddings"]: "cell_embeddings", keys["obsm"]["probabilities"]: "probabilities"}
        for key, name in arrays.items():
            dataset = handle["obsm"].create_dataset(key, shape=(settings["n_cells"], first[name].shape[1]),
                                                    dtype="float32")
            dataset.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
        start = 0
        for i in range(n_chunks):
            chunk = load_file(out / f"chunk_{i:05d}.safetensors")
            stop = start + len(chunk["probabilities"])
            for key, name in arrays.items():
                handle["obsm"][key][start:stop] = chunk[name]
            start = stop
        if "uns" not in handle:
            write_elem(handle, "uns", {})
        write_elem(handle["uns"], keys["uns"]["settings"],
                   {key: value for key, value in settings.items() if key not in RUN_KEYS})
    os.replace(partial, target)


if __name__ == "__main__":
    main()
