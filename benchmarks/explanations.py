"""Are the explanations faithful, and do they name the biology? On the test cells of a shared split, with a trained
model folder:

- faithfulness: leaving out each cell's 5 explained genes (the pipeline's `explain`: soft tokens and, for a model
  whose linear gene scores read a longer list, that list's genes) must change its prediction far more often than
  leaving out 5 of the genes it reads at random (a gene left out leaves the soft tokens, the others moving up, and
  the longer list); the same for the soft tokens alone (the measure before the longer list was explained);
- biology (Baron human pancreas): how often the textbook marker is among the top-5 genes of the cells of its type
  (INS for beta, GCG for alpha, SST for delta, PRSS1 or CPA1 for acinar, KRT19 for ductal).

    python benchmarks/explanations.py --model outputs/cross_species/baron_human_pancreas_model

Writes docs/benchmarks/explanations.{json,md} and docs/figures/<dataset>_driver_genes.png.
"""

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from splits import REPO, load_split, splits  # noqa: E402

MARKERS = {"beta": ["INS"], "alpha": ["GCG"], "delta": ["SST"], "acinar": ["PRSS1", "CPA1"], "ductal": ["KRT19"]}


def without_genes(inputs, gone):
    """The inputs without the genes `gone` (cells x n gene ids, -1 for none): they leave the soft tokens (the other
    genes move up) and the linear gene scores' longer list."""
    real = inputs["gene_mask"].bool()
    removed = (inputs["gene_ids"][:, :, None] == gone[:, None, :]).any(-1) & real
    order = torch.argsort(removed.long(), dim=1, stable=True)  # kept positions first, in their order
    n_kept = (~removed).sum(1, keepdim=True)
    positions = torch.arange(removed.shape[1])[None, :]
    kept = {"gene_ids": inputs["gene_ids"].gather(1, order), "gene_values": inputs["gene_values"].gather(1, order),
            "gene_mask": inputs["gene_mask"].gather(1, order) * (positions < n_kept).long()}
    if "linear_gene_ids" in inputs:
        still = (inputs["linear_gene_ids"][:, :, None] != gone[:, None, :]).all(-1)
        kept.update({"linear_gene_ids": inputs["linear_gene_ids"], "linear_gene_values": inputs["linear_gene_values"],
                     "linear_gene_mask": inputs["linear_gene_mask"] * still.long()})
    return kept


def padded(rows, width):
    """Lists of gene ids as one tensor, -1 where a list is shorter."""
    return torch.tensor([list(row) + [-1] * (width - len(row)) for row in rows], dtype=torch.long)


def main(argv=None):
    from transformers import AutoModel, AutoProcessor, pipeline

    from scinterpreter.explain import driver_genes, plot_driver_genes

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--split", default="baron_human_pancreas")
    parser.add_argument("--n_genes", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks")
    args = parser.parse_args(argv)
    dataset, split, split_file, fold = splits([args.split])[0]
    adata, labels, _, test = load_split(dataset, split_file, fold)
    cells = adata[test].copy()
    started = time.perf_counter()
    annotate = pipeline("cell-annotation", model=args.model, trust_remote_code=True)
    result = annotate(cells, explain=args.n_genes, batch_size=16)
    explain_seconds = time.perf_counter() - started
    model, processor = annotate.model.eval(), annotate.processor

    inputs = dict(processor(cells, return_tensors="pt"))
    index = {gene: i for i, gene in enumerate(processor.gene_vocab)}
    rng = np.random.default_rng(args.seed)
    n = args.n_genes
    with torch.no_grad():
        predicted = model(**inputs).logits.argmax(-1)
        attributions = torch.cat([model.gene_attributions(**{k: v[i:i + 16] for k, v in inputs.items()},
                                                          target=predicted[i:i + 16])
                                  for i in range(0, len(predicted), 16)])
        real = inputs["gene_mask"].bool()
        token_ids = [inputs["gene_ids"][cell][real[cell]].tolist() for cell in range(len(real))]
        read_ids = token_ids
        if "linear_gene_ids" in inputs:  # every gene the model reads: the soft tokens and the longer list
            linear_real = inputs["linear_gene_mask"].bool()
            read_ids = [sorted(set(tokens) | set(inputs["linear_gene_ids"][cell][linear_real[cell]].tolist()))
                        for cell, tokens in enumerate(token_ids)]
        top_tokens = attributions.masked_fill(~real, -torch.inf).topk(n, dim=1).indices
        removals = {
            "explained": padded([[index[g["gene"]] for g in r["genes"]] for r in result], n),
            "top_tokens": padded([[inputs["gene_ids"][cell, p].item() for p in top_tokens[cell] if real[cell, p]]
                                  for cell in range(len(real))], n),
            "random_read": padded([rng.choice(ids, size=min(n, len(ids)), replace=False) for ids in read_ids], n),
            "random_tokens": padded([rng.choice(ids, size=min(n, len(ids)), replace=False) for ids in token_ids], n),
        }
        changed = {name: float((model(**without_genes(inputs, gone)).logits.argmax(-1) != predicted).float().mean())
                   for name, gone in removals.items()}
    n_read = float(np.mean([len(ids) for ids in read_ids]))
    explained = removals["explained"]
    explained_tokens = sum(int(np.isin(row[row >= 0], tokens).sum()) for row, tokens in zip(explained, token_ids)
                           ) / max(int((explained >= 0).sum()), 1)

    id2label = model.config.id2label
    predicted_labels = np.array([id2label[int(i)] for i in predicted])
    explained = [[g["gene"] for g in r["genes"]] for r in result]
    biology = {}
    for cell_type, markers in MARKERS.items():
        members = [i for i in range(len(test)) if labels[test][i] == cell_type and predicted_labels[i] == cell_type]
        if members:
            hits = sum(any(m in explained[i] for m in markers) for i in members)
            biology[cell_type] = {"markers": markers, "cells": len(members), "fraction": round(hits / len(members), 3)}
    summary = driver_genes(result.adata)
    figure = REPO / "docs" / "figures" / f"{dataset}_driver_genes.png"
    plot_driver_genes(summary, figure, title=f"{dataset}: genes that drove each call (test cells)")
    record = {"model": args.model, "dataset": dataset, "split": split, "n_cells": int(len(test)),
              "n_genes": args.n_genes, "prediction_changed_without_explained_genes": round(changed["explained"], 4),
              "prediction_changed_without_top_genes": round(changed["top_tokens"], 4),  # the soft tokens', as before
              "prediction_changed_without_random_read_genes": round(changed["random_read"], 4),
              "prediction_changed_without_random_genes": round(changed["random_tokens"], 4),  # soft tokens, as before
              "genes_read_per_cell": round(n_read, 1), "explained_genes_among_soft_tokens": round(explained_tokens, 3),
              "markers_in_top_genes": biology,
              "explain_seconds": round(explain_seconds, 1),
              "top_drivers": {t: summary[summary["cell_type"] == t].head(5)[["gene", "fraction"]].values.tolist()
                              for t in sorted(summary["cell_type"].unique())}}
    print(json.dumps(record, indent=1))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "explanations.json").write_text(json.dumps(record, indent=1) + "\n")
    lines = [f"# Explanations: faithful, and biology?", "",
             f"`python benchmarks/explanations.py {' '.join(argv if argv is not None else sys.argv[1:])}` on "
             f"{date.today()}: {len(test)} test cells of {dataset} ({split} split), top {args.n_genes} genes per cell by "
             f"leave-one-gene-out attribution ({explain_seconds:.0f} s for the pipeline's explain pass on this CPU). "
             f"The model reads {n_read:.1f} genes per cell on average ({model.config.n_top_genes} soft tokens"
             + (", and the linear gene scores' longer list" if "linear_gene_ids" in inputs else "") + "); "
             f"{100 * explained_tokens:.0f}% of the explained genes are soft tokens. A gene left out leaves the soft "
             "tokens (the others move up) and the linear gene scores' list.", "",
             "| genes left out of each cell | cells whose prediction changes |", "|---|---|",
             f"| its {n} explained genes (the pipeline's `explain`) | {changed['explained']:.3f} |",
             f"| its {n} most attributed soft-token genes | {changed['top_tokens']:.3f} |",
             f"| {n} of the genes it reads, at random (seed {args.seed}) | {changed['random_read']:.3f} |",
             f"| {n} of its soft-token genes, at random | {changed['random_tokens']:.3f} |", "",
             "| cell type (correctly predicted cells) | marker | cells | marker among the top genes |", "|---|---|---|---|"]
    lines += [f"| {t} | {'/'.join(b['markers'])} | {b['cells']} | {b['fraction']:.3f} |" for t, b in biology.items()]
    lines += ["", f"Dot plot: `docs/figures/{figure.name}`."]
    (args.out / "explanations.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
