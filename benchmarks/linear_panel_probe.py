"""Should the linear gene scores read each cell's top genes, or one fixed panel of variable genes? From saved logits.

For each run of the 2026-12-07 default (`benchmarks/records/test_logits_2026-12-07b`: the head's logits, divided by
its validation temperature, and the linear gene scores' share), an L2 logistic regression (C = 1, scikit-learn) is
fitted on the same training cells (the split's training cells less the seed's validation cells) on: `top1024`, each
cell's 1024 genes by excess (today's input, refitted); `hvgN`, every cell's values of one panel of N highly variable
genes of the training cells (scanpy's `highly_variable_genes`, default flavour, on the processor's log-normalised
values), below-reference values included; `all`: every matched gene. Columns: test macro-F1 of head + regression
(`+lin` columns: the regression alone). Minutes; no training of the model.

    python benchmarks/linear_panel_probe.py   # -> docs/benchmarks/linear_panel_probe.{json,md}
"""
import json, sys
from pathlib import Path
import anndata as ad
import numpy as np
import scanpy as sc
from scipy import sparse
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sklearn.linear_model import LogisticRegression
from splits import score, splits
from linear_c_probe import saved_runs, scores_of, split_inputs
from scinterpreter.genes import build_gene_table

PANELS = [1000, 2000, 4000]


def main():
    table = build_gene_table()
    out = {}
    only = sys.argv[1:]
    for dataset, split, split_file, fold in splits(only or None):
        adata, labels, train, processor, top1024 = split_inputs(table, split_file, dataset, fold)
        designs = {"top1024": top1024}
        values, _ = processor.normalize(adata)
        values = sparse.csr_matrix(values)
        designs["all"] = values
        for n in PANELS:
            if n >= values.shape[1]:
                continue
            variable = sc.pp.highly_variable_genes(ad.AnnData(values[train]), n_top_genes=n, inplace=False)
            designs[f"hvg{n}"] = values[:, np.flatnonzero(variable["highly_variable"].to_numpy())]
        rows = []
        for seed, N, head, cells, reference, saved, fit_part, _ in saved_runs(dataset, split, labels[train]):
            names = list(N)
            fit_cells = train[fit_part]
            row = {"saved": score(reference, N[saved["logits"].argmax(1)])["macro_f1"]}
            for name, design in designs.items():
                regression = LogisticRegression(C=1.0, max_iter=3000).fit(design[fit_cells], labels[fit_cells])
                test_scores = scores_of(regression, design[cells], names)
                row[name] = score(reference, N[(head + test_scores).argmax(1)])["macro_f1"]
                row[name + " lin"] = score(reference, N[test_scores.argmax(1)])["macro_f1"]
            rows.append(row)
            print(dataset, split, seed, {k: round(v, 3) for k, v in row.items()}, flush=True)
        out[f"{dataset}/{split}"] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    keys = sorted({k for v in out.values() for k in v}, key=lambda k: (k.endswith(" lin"), k))
    print("MEAN", {k: round(float(np.mean([v[k] for v in out.values() if k in v])), 3) for k in keys})
    if only:
        return
    target = Path(__file__).resolve().parent.parent / "docs" / "benchmarks" / "linear_panel_probe"
    target.with_suffix(".json").write_text(json.dumps(out, indent=1) + "\n")
    cell = lambda v, k: f"{v[k]:.3f}" if k in v else "-"  # noqa: E731
    lines = ["# Input of the linear gene scores: each cell's top genes or one panel, from the default's saved logits", "",
             "`python benchmarks/linear_panel_probe.py`: test macro-F1, mean over 3 seeds (see the script's docstring; "
             "`hvgN` is missing where the data has fewer genes).", "",
             "| split | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    lines += [f"| {name} | " + " | ".join(cell(v, k) for k in keys) + " |" for name, v in out.items()]
    present = lambda k: [v[k] for v in out.values() if k in v]  # noqa: E731
    lines += ["| **mean (splits)** | " + " | ".join(f"{np.mean(present(k)):.3f} ({len(present(k))})" for k in keys)
              + " |"]
    target.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
