"""The information ceiling of the model's input: logistic regression on exactly what the processor hands the model.

For each selection rule and k, the processor (fitted on the training cells, as `train.py` does) picks each cell's
genes; a linear probe then sees only those genes with the values their soft tokens carry (every other gene zero):
`genes` = one feature per vocabulary gene (what the selection keeps), `text` = the sum of the chosen genes' frozen
text embeddings weighted by those values (GenePT-w restricted to the chosen genes: what a linear read of the frozen
gene table keeps). Beside them, logistic regression on all genes. L2 logistic regression, C=1, test acc / macro-F1.

    python benchmarks/ceiling_probe.py                                      # all 10 splits, the default grid
    python benchmarks/ceiling_probe.py --selections expression excess --k 32 64 128 --token_values expression excess
    python benchmarks/ceiling_probe.py --splits baron_human_pancreas lobo_3pv1 --exclude_genes ribosomal_mitochondrial

Seconds per split on 2 CPU cores. Writes docs/benchmarks/ceiling.{json,md} (or --out).
"""

import argparse
import itertools
import json
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
from scipy import sparse
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(Path(__file__).resolve().parent))
from splits import REPO, load_split, score, splits  # noqa: E402

from scinterpreter.recipe import Recipe  # noqa: E402

from scinterpreter.build import build_processor  # noqa: E402
from scinterpreter.genes import build_gene_table  # noqa: E402


def probe(features, labels, train, test):
    classifier = LogisticRegression(C=1.0, max_iter=3000).fit(features[train], labels[train])
    scored = score(labels[test], classifier.predict(features[test]))
    return scored["accuracy"], scored["macro_f1"]


def chosen_genes(encoded, n_vocab):
    """Cells x vocabulary (sparse): each cell's chosen genes carry their token values, every other gene 0."""
    mask = encoded["gene_mask"].astype(bool)
    rows = np.broadcast_to(np.arange(len(mask))[:, None], mask.shape)[mask]
    return sparse.csr_matrix((encoded["gene_values"][mask], (rows, encoded["gene_ids"][mask])),
                             shape=(len(mask), n_vocab))


def rule_name(selection, k, token_value, exclude_genes):
    name = f"top {k} by {selection}" + (f", tokens carry {token_value}" if token_value != "expression" else "")
    return name + (f", without {exclude_genes}" if exclude_genes else "")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--splits", nargs="*", help="datasets or split names (default: all 10 splits)")
    parser.add_argument("--selections", nargs="+", default=["expression", "excess"])
    parser.add_argument("--k", nargs="+", type=int, default=[Recipe.n_top_genes])
    parser.add_argument("--token_values", nargs="+", default=["expression"])
    parser.add_argument("--exclude_genes", nargs="+", default=[None])
    parser.add_argument("--features", nargs="+", default=["genes", "text"], choices=["genes", "text"])
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks" / "ceiling"))
    args = parser.parse_args(argv)
    table = build_gene_table()
    n_vocab = len(table.vocab)
    rules = list(itertools.product(args.selections, args.k, args.token_values,
                                   [None if e in (None, "none") else e for e in args.exclude_genes]))
    records = []
    for dataset, split, split_file, fold in splits(args.splits):
        started = time.perf_counter()
        adata, labels, train, test = load_split(dataset, split_file, fold)
        base = build_processor(table)
        values, gene_ids = base.normalize(adata)
        row = {"dataset": dataset, "split": split, "all genes": probe(values, labels, train, test)}
        for selection, k, token_value, exclude in rules:
            processor = build_processor(table, n_top_genes=k, gene_selection=selection, token_value=token_value,
                                        exclude_genes=exclude)
            if selection == "excess" or token_value == "excess":
                processor.fit(adata[train])
            encoded = processor(adata, return_tensors="np")
            chosen = chosen_genes(encoded, n_vocab)
            name = rule_name(selection, k, token_value, exclude)
            if "genes" in args.features:
                row[f"{name} [genes]"] = probe(chosen, labels, train, test)
            if "text" in args.features:
                row[f"{name} [text]"] = probe(np.asarray(chosen @ table.embeddings), labels, train, test)
        row["seconds"] = round(time.perf_counter() - started, 1)
        records.append(row)
        print(json.dumps(row), flush=True)
    write(records, Path(args.out), " ".join(sys.argv[1:]) if argv is None else " ".join(argv))
    return records


def write(records, out: Path, command: str):
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(records, indent=1) + "\n")
    columns = [key for key in records[0] if key not in ("dataset", "split", "seconds")]
    lines = [
        "# Ceiling of the model's input: logistic regression on what the processor keeps",
        "",
        f"`python benchmarks/ceiling_probe.py {command}` on {date.today()} ({platform.machine()}, "
        f"{sum(r['seconds'] for r in records):.0f} s). Test accuracy / macro-F1, L2 logistic regression (C=1) "
        "fitted on the training cells. `[genes]`: one feature per vocabulary gene, the chosen genes carrying their "
        "token values and every other gene zero (what the selection keeps); `[text]`: the same values weighting the "
        "chosen genes' frozen text embeddings, summed (what a linear read of the frozen gene table keeps). "
        "Reference profiles are fitted on the training cells only.",
        "",
        "| dataset | split | " + " | ".join(columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for r in records:
        lines.append(f"| {r['dataset']} | {r['split']} | " + " | ".join(
            "{:.3f} / {:.3f}".format(*r[c]) for c in columns) + " |")
    means = [np.mean([r[c][1] for r in records]) for c in columns]
    lines.append(f"| **mean macro-F1** | {len(records)} splits | " + " | ".join(f"{m:.3f}" for m in means) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
