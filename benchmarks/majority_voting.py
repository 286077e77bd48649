"""Does majority voting over an over-clustering help? Test cells of shared splits, annotated by trained model folders
through the pipeline, scored per cell and after `majority_voting=True` (Leiden on the cell embeddings, CellTypist's
resolution rule).

    python benchmarks/majority_voting.py \
        --models outputs/cross_species/baron_human_pancreas_model outputs/cross_species/baron_mouse_pancreas_model \
        --splits baron_human_pancreas baron_mouse_pancreas

Each model is scored on the split of the same position (it must have been trained on that split's training cells).
Writes docs/benchmarks/majority_voting.{json,md} and, per split, docs/figures/<dataset>_annotation_umap.png (the test
cells on a UMAP of the model's cell embeddings, coloured by the labels given, the per-cell and the voted labels).
"""

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from splits import REPO, load_split, score, splits  # noqa: E402


def plot_annotation_umap(adata, truth, dataset):
    """The UMAP a user would draw with scanpy, coloured by the given labels, the per-cell and the voted labels."""
    import matplotlib

    matplotlib.use("Agg")
    import scanpy as sc

    columns = ["given label", "scinterpreter", "scinterpreter_majority_voting"]
    adata.obs["given label"] = truth
    # One category list for the three columns, so that a cell type has the same colour in every panel.
    categories = sorted(set().union(*(adata.obs[column].astype(str) for column in columns)))
    for column in columns:
        adata.obs[column] = adata.obs[column].astype(str).astype("category").cat.set_categories(categories)
    sc.pp.neighbors(adata, use_rep="X_scinterpreter", random_state=0)
    sc.tl.umap(adata, random_state=0)
    figure = sc.pl.umap(adata, color=columns, return_fig=True, show=False, wspace=0.45)
    path = REPO / "docs" / "figures" / f"{dataset}_annotation_umap.png"
    figure.savefig(path, dpi=90, bbox_inches="tight")
    return str(path.relative_to(REPO))


def main(argv=None):
    from transformers import pipeline

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--splits", nargs="+", required=True)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks")
    args = parser.parse_args(argv)
    if len(args.models) != len(args.splits):
        parser.error("give one split per model")
    records = []
    for model, name in zip(args.models, args.splits):
        dataset, split, split_file, fold = splits([name])[0]
        adata, labels, _, test = load_split(dataset, split_file, fold)
        annotate = pipeline("cell-annotation", model=model, trust_remote_code=True)
        started = time.perf_counter()
        result = annotate(adata[test].copy(), majority_voting=True)
        seconds = time.perf_counter() - started
        truth = labels[test]
        obs = result.adata.obs
        record = {"model": model, "dataset": dataset, "split": split, "n_cells": int(len(test)),
                  "n_clusters": int(obs["scinterpreter_over_clustering"].nunique()),
                  "over_clustering": result.adata.uns["scinterpreter"]["over_clustering"], "seconds": round(seconds, 1)}
        for method, column in (("per cell", "scinterpreter"), ("majority voting", "scinterpreter_majority_voting")):
            predicted = obs[column].astype(str).to_numpy()
            record[method] = score(truth, predicted)
        record["figure"] = plot_annotation_umap(result.adata, truth, dataset)
        print(json.dumps(record))
        records.append(record)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "majority_voting.json").write_text(json.dumps(records, indent=1) + "\n")
    lines = ["# Majority voting over an over-clustering", "",
             f"`python benchmarks/majority_voting.py {' '.join(argv if argv is not None else sys.argv[1:])}` on "
             f"{date.today()}. Test accuracy / macro-F1 of the pipeline's per-cell labels and of `majority_voting=True`.",
             "", "| dataset | split | model | cells | clusters | per cell | majority voting |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['dataset']} | {r['split']} | `{r['model']}` | {r['n_cells']} | {r['n_clusters']} | "
              f"{r['per cell']['accuracy']:.3f} / {r['per cell']['macro_f1']:.3f} | "
              f"{r['majority voting']['accuracy']:.3f} / {r['majority voting']['macro_f1']:.3f} |" for r in records]
    lines += [""] + [f"![{r['dataset']}](../figures/{Path(r['figure']).name})" for r in records]
    (args.out / "majority_voting.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
