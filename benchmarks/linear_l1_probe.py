"""Would a sparse (L1 or elastic-net) panel regression serve the default better than today's L2? Estimated from the
session-16 default's saved test logits.

For each saved run of the default (`linear_panel`, `benchmarks/records/test_logits_2026-12-07c`: the logits and the
linear gene scores' share, which is subtracted to leave the head's logits, already divided by its validation
temperature), the panel regression is refitted with scikit-learn on the same fitting cells (the split's training cells
less the seed's validation cells) and design (the default's processor fitted on the training cells: each cell's
log-normalised values on its 2000-gene panel), class-balanced, and added to the head counted twice, as the default
adds it. `L2 C=1`: today's regression (its row checks the refit against the product); `L1 C=c`: L1 penalty (saga);
`EN C=c`: elastic net, half L1. Columns per variant: macro-F1 of head + 2 x regression, and of the regression alone
(`lin`). Mean over the saved seeds. Minutes to an hour (saga); no training of the model.

    python benchmarks/linear_l1_probe.py [dataset ...]   # -> docs/benchmarks/linear_l1_probe.{json,md} (all splits)
"""
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from linear_c_probe import linear_design, saved_runs, scores_of, write_probe_report  # noqa: E402
from splits import load_split, score, splits  # noqa: E402

from scinterpreter.build import build_processor  # noqa: E402
from scinterpreter.genes import build_gene_table  # noqa: E402

RECORDS = Path(__file__).resolve().parent / "records" / "test_logits_2026-12-07c"
SCALE = 2.0  # the default's linear_gene_scale
VARIANTS = {"L2 C=1": ("l2", 1.0, None), "L1 C=0.1": ("l1", 0.1, 1.0), "L1 C=0.3": ("l1", 0.3, 1.0),
            "L1 C=1": ("l1", 1.0, 1.0), "EN C=0.3": ("elasticnet", 0.3, 0.5), "EN C=1": ("elasticnet", 1.0, 0.5)}


def regression(penalty, c, l1_ratio):
    from sklearn.linear_model import LogisticRegression

    if penalty == "l2":
        return LogisticRegression(C=c, max_iter=3000, class_weight="balanced")
    return LogisticRegression(penalty=penalty, C=c, l1_ratio=l1_ratio, solver="saga", max_iter=300, tol=1e-3,
                              class_weight="balanced")


def main():
    table = build_gene_table()
    only = sys.argv[1:]
    out = {}
    for dataset, split, split_file, fold in splits(only or None):
        adata, labels, train, _ = load_split(dataset, split_file, fold)
        processor = build_processor(table, n_top_genes=32, n_linear_genes=2000, gene_selection="excess",
                                    linear_gene_selection="variable")
        processor.fit(adata[train])
        design = linear_design(processor(adata, return_tensors="np"), len(table.vocab))
        rows = []
        for seed, names, head, cells, reference, saved, fit_part, _ in saved_runs(
                dataset, split, labels[train], records=RECORDS, option="linear_panel"):
            fit_cells = train[fit_part]
            row = {"saved": score(reference, names[saved["logits"].argmax(1)])["macro_f1"]}
            for name, (penalty, c, l1_ratio) in VARIANTS.items():
                started = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # saga's convergence warnings at max_iter: the cap is the budget
                    fitted = regression(penalty, c, l1_ratio).fit(design[fit_cells], labels[fit_cells])
                scores = scores_of(fitted, design[cells], list(names))
                row[name] = score(reference, names[(head + SCALE * scores).argmax(1)])["macro_f1"]
                row[name + " lin"] = score(reference, names[scores.argmax(1)])["macro_f1"]
                row[name + " genes"] = float((np.abs(fitted.coef_).sum(0) > 0).sum())
                row[name + " s"] = time.perf_counter() - started
            rows.append(row)
            print(dataset, split, seed, {k: round(v, 3) for k, v in row.items()}, flush=True)
        out[f"{dataset}/{split}"] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    print("MEAN", {k: round(float(np.mean([v[k] for v in out.values()])), 4) for k in next(iter(out.values()))})
    if only:
        return
    keys = ["saved"] + [k for name in VARIANTS for k in (name, name + " lin")]
    write_probe_report("linear_l1_probe", out, keys,
                       "L1 and elastic-net panel regressions, estimated from the default's saved test logits",
                       "`python benchmarks/linear_l1_probe.py`: test macro-F1 of head + 2 x refitted regression (and "
                       "of the regression alone, `lin`), mean over the saved seeds; `saved`: the product runs' own "
                       "logits (see the script's docstring). Genes with a weight and fitting seconds per variant in "
                       "the JSON.")


if __name__ == "__main__":
    main()
