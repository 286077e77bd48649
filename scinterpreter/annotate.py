"""Annotate `.h5ad` files of any size: read in chunks (backed mode), write results as they come, resume after a kill.

    python -m scinterpreter.annotate cells.h5ad --model outputs/scinterpreter --out cells_annotated/

The output folder holds, per chunk of cells, `chunk_NNNNN.tsv` (cell, label, score) and
`chunk_NNNNN.safetensors` (cell embeddings and every cell type's probability), plus `progress.json` (with the
cell types' order), rewritten atomically after each chunk. A rerun with the same arguments skips the chunks already
written, so a killed job loses at most the chunk in flight and redoes no finished cell. `read_annotations(out)` and
`read_probabilities(out)` gather the results; `--write_h5ad` adds them to a copy of the input as the pipeline does:
`obs[key_added]`, `obs[key_added + "_score"]`, `obsm[key_added + "_probabilities"]`, `obsm["X_" + key_added]` and
`uns[key_added]` (labels, model, threshold, calibration temperature, scinterpreter version).
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

logger = logging.getLogger(__name__)

PROGRESS = "progress.json"
# Bumped when a chunk's contents change, so that a folder written by an older version is not resumed.
CHUNK_FORMAT = 2


def _atomic_write(path: Path, text: str):
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def annotate_h5ad(path, model, out, chunk_size=4096, batch_size=64, threshold=0.0, layer=None, max_chunks=None,
                  compile_backbone=None):
    """
    Annotates the cells of `path` chunk by chunk without loading the whole matrix.

    Args:
        path: the `.h5ad` file (opened in backed mode).
        model: a model folder / Hub id, or a `cell-annotation` pipeline.
        out: output folder (created; reused to resume).
        chunk_size (`int`): cells read and written at a time.
        max_chunks (`int`, *optional*): stop after this many new chunks (for tests and trial runs).
        compile_backbone (`bool`, *optional*): run the backbone under `torch.compile`; by default when the file
            holds at least the pipeline's `compile_min_cells` (20,000) cells.

    Returns:
        `dict` with `n_cells`, `n_done`, `cells_per_second` of this call.
    """
    from transformers import pipeline

    from .data import read_h5ad

    annotate = model if callable(model) else pipeline("cell-annotation", model=str(model), trust_remote_code=True)
    adata = read_h5ad(path, backed="r")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n_cells = adata.n_obs
    n_chunks = (n_cells + chunk_size - 1) // chunk_size
    progress_file = out / PROGRESS
    config = annotate.model.config
    settings = {"source": str(Path(path).resolve()), "n_cells": n_cells, "chunk_size": chunk_size,
                "format": CHUNK_FORMAT, "labels": [config.id2label[i] for i in range(len(config.id2label))],
                "model": str(getattr(annotate.model, "name_or_path", model)), "threshold": float(threshold),
                "calibration_temperature": float(getattr(config, "calibration_temperature", None) or 1.0),
                "scinterpreter_version": getattr(config, "scinterpreter_version", None) or "unknown"}
    done = 0
    if progress_file.is_file():
        progress = json.loads(progress_file.read_text())
        if {key: progress.get(key) for key in settings} != settings:
            raise ValueError(f"{out} holds results of another run ({progress_file}); use a new --out folder.")
        done = progress["chunks_done"]
        logger.info(f"Resuming: {done} of {n_chunks} chunks already annotated in {out}")
    started, annotated = time.perf_counter(), 0
    bar = tqdm(total=n_cells, initial=min(done * chunk_size, n_cells), unit="cells", desc="Annotating",
               dynamic_ncols=True)
    genes = list(adata.var_names)
    if compile_backbone is None:
        compile_backbone = n_cells >= getattr(annotate, "compile_min_cells", float("inf"))
    options = {}
    if compile_backbone:
        if "compile_backbone" in inspect.signature(annotate.__call__).parameters:
            options["compile_backbone"] = True
        else:
            logger.warning("This model folder's pipeline code predates compile_backbone: annotating uncompiled.")
    for chunk in range(done, n_chunks):
        if max_chunks is not None and chunk - done >= max_chunks:
            break
        start, stop = chunk * chunk_size, min((chunk + 1) * chunk_size, n_cells)
        rows = adata.X[start:stop] if layer is None else adata.layers[layer][start:stop]
        results = annotate(rows, gene_names=genes, batch_size=batch_size, threshold=threshold, show_progress=False,
                           **options)
        names = adata.obs_names[start:stop]
        lines = [f"{cell}\t{r['label']}\t{r['score']:.6f}" for cell, r in zip(names, results)]
        (out / f"chunk_{chunk:05d}.tsv").write_text("cell\tlabel\tscore\n" + "\n".join(lines) + "\n")
        save_file({"cell_embeddings": np.ascontiguousarray(results.embeddings),
                   "probabilities": np.ascontiguousarray(results.probabilities)}, out / f"chunk_{chunk:05d}.safetensors")
        _atomic_write(progress_file, json.dumps({**settings, "chunks_done": chunk + 1}))
        annotated += stop - start
        bar.update(stop - start)
    bar.close()
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
    (`model`, `threshold`, `calibration_temperature`, `scinterpreter_version`)."""
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
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--threshold", type=float, default=0.0)
    parser.add_argument("--layer", default=None)
    parser.add_argument("--write_h5ad", default=None, help="also write a copy of the input with the annotation")
    parser.add_argument("--key_added", default="scinterpreter")
    parser.add_argument("--compile_backbone", default=None, type=lambda value: value.lower() in ("1", "true", "yes"),
                        help="true/false: run the backbone under torch.compile (default: from 20,000 cells on)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    summary = annotate_h5ad(args.h5ad, args.model, args.out, args.chunk_size, args.batch_size, args.threshold,
                            args.layer, compile_backbone=args.compile_backbone)
    print(json.dumps(summary))
    if args.write_h5ad:
        from .data import read_h5ad

        adata = read_h5ad(args.h5ad)
        cells, labels, scores, embeddings = read_annotations(args.out)
        if len(cells) != adata.n_obs:
            raise ValueError(f"{args.out} holds {len(cells)} of {adata.n_obs} cells: finish the run first.")
        adata.obs[args.key_added] = labels
        adata.obs[args.key_added] = adata.obs[args.key_added].astype("category")
        adata.obs[f"{args.key_added}_score"] = scores
        adata.obsm[f"X_{args.key_added}"] = embeddings
        labels, probabilities, settings = read_probabilities(args.out)
        adata.obsm[f"{args.key_added}_probabilities"] = probabilities
        adata.uns[args.key_added] = {"labels": labels, **{key: settings[key] for key in (
            "model", "threshold", "calibration_temperature", "scinterpreter_version")}}
        adata.write_h5ad(args.write_h5ad)


if __name__ == "__main__":
    main()
