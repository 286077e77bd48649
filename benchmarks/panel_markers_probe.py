"""Does the regression's gene panel lose markers it should keep? Estimated from the session-16 default's saved test
logits.

scanpy's `highly_variable_genes` (seurat flavour, the default's panel) ranks genes by dispersion normalised within
their expression bin, and can pass over the most expressed markers (Baron human: GCG, SST). For each saved run of the
default (`linear_panel`, `benchmarks/records/test_logits_2026-12-07c`; the head's logits = logits less the linear
share), the default's regression (L2, C = 1, class-balanced, the scikit-learn objective the product fits) is refitted
on the same fitting cells on several panels of the matched genes and added to the head counted twice, as the default
adds it:

- `hvg2000`: today's panel (checks the refit against the product: `saved`);
- `hvg2000+topN`: the same and the N genes of highest mean log-normalised expression over the training cells;
- `hvg1500+top500`: the same width as today, a quarter given to the most expressed genes.

Columns: test macro-F1 of head + 2 x regression, and of the regression alone (`lin`); mean over the saved seeds.
Minutes; no training of the model.

    python benchmarks/panel_markers_probe.py [dataset or split ...]   # -> docs/benchmarks/panel_markers_probe.{json,md}
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from linear_c_probe import saved_runs, scores_of, write_probe_report  # noqa: E402
from splits import load_split, score, splits  # noqa: E402

from scinterpreter.build import build_processor  # noqa: E402
from scinterpreter.genes import build_gene_table  # noqa: E402

RECORDS = Path(__file__).resolve().parent / "records" / "test_logits_2026-12-07c"
SCALE = 2.0  # the default's linear_gene_scale


def highly_variable(values, n_genes):
    import anndata as ad
    import scanpy as sc

    if values.shape[1] <= n_genes:
        return np.arange(values.shape[1])
    table = sc.pp.highly_variable_genes(ad.AnnData(values), n_top_genes=n_genes, inplace=False)
    return np.flatnonzero(table["highly_variable"].to_numpy())


def panels(train_values):
    """Column indices of each panel, from the training cells' log-normalised values."""
    by_mean = np.argsort(-np.asarray(train_values.mean(0)).ravel(), kind="stable")
    hvg2000, hvg1500 = highly_variable(train_values, 2000), highly_variable(train_values, 1500)
    return {"hvg2000": hvg2000,
            "hvg2000+top100": np.union1d(hvg2000, by_mean[:100]),
            "hvg2000+top300": np.union1d(hvg2000, by_mean[:300]),
            "hvg1500+top500": np.union1d(hvg1500, by_mean[:500])}


def main():
    from scipy import sparse
    from sklearn.linear_model import LogisticRegression

    table = build_gene_table()
    only = sys.argv[1:]
    out = {}
    for dataset, split, split_file, fold in splits(only or None):
        adata, labels, train, _ = load_split(dataset, split_file, fold)
        processor = build_processor(table)
        values, _ = processor.normalize(adata)
        values = sparse.csr_matrix(values)
        chosen = panels(values[train])
        rows = []
        for seed, names, head, cells, reference, saved, fit_part, _ in saved_runs(
                dataset, split, labels[train], records=RECORDS, option="linear_panel"):
            fit_cells = train[fit_part]
            row = {"saved": score(reference, names[saved["logits"].argmax(1)])["macro_f1"]}
            for name, columns in chosen.items():
                design = values[:, columns]
                regression = LogisticRegression(C=1.0, max_iter=3000, class_weight="balanced")
                scores = scores_of(regression.fit(design[fit_cells], labels[fit_cells]), design[cells], list(names))
                row[name] = score(reference, names[(head + SCALE * scores).argmax(1)])["macro_f1"]
                row[name + " lin"] = score(reference, names[scores.argmax(1)])["macro_f1"]
                row[name + " genes"] = float(len(columns))
            rows.append(row)
            print(dataset, split, seed, {k: round(v, 3) for k, v in row.items()}, flush=True)
        out[f"{dataset}/{split}"] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    print("MEAN", {k: round(float(np.mean([v[k] for v in out.values()])), 4) for k in next(iter(out.values()))})
    if only:
        return
    keys = [k for k in next(iter(out.values())) if not k.endswith(" genes")]
    write_probe_report("panel_markers_probe", out, keys,
                       "The regression's gene panel: highly variable genes, and the most expressed ones",
                       "`python benchmarks/panel_markers_probe.py`: test macro-F1 of head + 2 x refitted regression "
                       "(and of the regression alone, `lin`), mean over the saved seeds; `saved`: the product runs' "
                       "own logits (see the script's docstring). Panel sizes in the JSON.")


if __name__ == "__main__":
    main()
