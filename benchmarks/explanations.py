"""Are the explanations faithful, and do they name the biology? On the test cells of a shared split, with a trained
model folder:

- faithfulness: leaving out each cell's 5 most attributed genes must change its prediction far more often than
  leaving out 5 of its genes at random (both: the tokens are removed, the other genes move up);
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


def without_positions(inputs, removed):
    """The inputs with the genes at `removed` (cells x positions, bool) left out; the others move up."""
    order = torch.argsort(removed.long(), dim=1, stable=True)  # kept positions first, in their order
    n_kept = (~removed).sum(1, keepdim=True)
    positions = torch.arange(removed.shape[1])[None, :]
    kept = {"gene_ids": inputs["gene_ids"].gather(1, order), "gene_values": inputs["gene_values"].gather(1, order),
            "gene_mask": inputs["gene_mask"].gather(1, order) * (positions < n_kept).long()}
    if "linear_gene_ids" in inputs:  # the removed genes leave the linear gene scores' list too
        gone = torch.where(removed & inputs["gene_mask"].bool(), inputs["gene_ids"], -1)
        still = (inputs["linear_gene_ids"][:, :, None] != gone[:, None, :]).all(-1)
        kept.update({"linear_gene_ids": inputs["linear_gene_ids"], "linear_gene_values": inputs["linear_gene_values"],
                     "linear_gene_mask": inputs["linear_gene_mask"] * still.long()})
    return kept


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
    rng = np.random.default_rng(args.seed)
    with torch.no_grad():
        predicted = model(**inputs).logits.argmax(-1)
        attributions = torch.cat([model.gene_attributions(**{k: v[i:i + 16] for k, v in inputs.items()},
                                                          target=predicted[i:i + 16])
                                  for i in range(0, len(predicted), 16)])
        real = inputs["gene_mask"].bool()
        top = torch.zeros_like(real)
        masked = attributions.masked_fill(~real, -torch.inf)
        top.scatter_(1, masked.topk(args.n_genes, dim=1).indices, True)
        top &= real
        random = torch.zeros_like(real)
        for cell in range(len(real)):
            genes = np.flatnonzero(real[cell].numpy())
            random[cell, rng.choice(genes, size=min(args.n_genes, len(genes)), replace=False)] = True
        changed = {name: float((model(**without_positions(inputs, removed)).logits.argmax(-1) != predicted)
                               .float().mean()) for name, removed in (("top", top), ("random", random))}

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
              "n_genes": args.n_genes, "prediction_changed_without_top_genes": round(changed["top"], 4),
              "prediction_changed_without_random_genes": round(changed["random"], 4), "markers_in_top_genes": biology,
              "explain_seconds": round(explain_seconds, 1),
              "top_drivers": {t: summary[summary["cell_type"] == t].head(5)[["gene", "fraction"]].values.tolist()
                              for t in sorted(summary["cell_type"].unique())}}
    print(json.dumps(record, indent=1))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "explanations.json").write_text(json.dumps(record, indent=1) + "\n")
    lines = [f"# Explanations: faithful, and biology?", "",
             f"`python benchmarks/explanations.py {' '.join(argv if argv is not None else sys.argv[1:])}` on "
             f"{date.today()}: {len(test)} test cells of {dataset} ({split} split), top {args.n_genes} genes per cell by "
             f"leave-one-gene-out attribution ({explain_seconds:.0f} s for the pipeline's explain pass on this CPU).", "",
             "| genes left out of each cell | cells whose prediction changes |", "|---|---|",
             f"| its {args.n_genes} most attributed | {changed['top']:.3f} |",
             f"| {args.n_genes} of its genes at random (seed {args.seed}) | {changed['random']:.3f} |", "",
             "| cell type (correctly predicted cells) | marker | cells | marker among the top genes |", "|---|---|---|---|"]
    lines += [f"| {t} | {'/'.join(b['markers'])} | {b['cells']} | {b['fraction']:.3f} |" for t, b in biology.items()]
    lines += ["", f"Dot plot: `docs/figures/{figure.name}`."]
    (args.out / "explanations.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
