"""Which regularisation should the linear gene scores have? Estimated from the default's saved test logits.

For each run of the 2026-12-07 default (`benchmarks/records/test_logits_2026-12-07b`: the head's logits, already
divided by its validation temperature, and the linear gene scores' share), the linear gene scores are refitted the
way `fit_linear_gene_scores` fits them (multinomial L2 logistic regression on each cell's 1024 genes by excess, their
log-normalised values, scikit-learn's objective) on the same training cells (the split's training cells less the
seed's validation cells), for several `C` (and with class weights), and added to the head. Columns: test macro-F1 of
head + regression for each variant, `C=val`: the `C` whose regression alone has the lowest validation log-loss,
`C=valF1`: the highest validation macro-F1; `check`: correlation of the refitted `C = 1` scores with the saved ones.
Minutes; no training of the model.

    python benchmarks/linear_c_probe.py   # -> docs/benchmarks/linear_c_probe.{json,md}
"""
import json, glob, sys
from pathlib import Path
import numpy as np
from scipy import sparse
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from safetensors import safe_open
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from splits import load_split, score, splits
from scinterpreter.build import build_processor
from scinterpreter.genes import build_gene_table
from scinterpreter.training import validation_split

C_GRID = [0.03, 0.1, 0.3, 1.0, 3.0]
RECORDS = Path(__file__).resolve().parent / "records" / "test_logits_2026-12-07b"


def linear_design(encoded, n_vocab):
    mask = encoded["linear_gene_mask"].astype(bool)
    rows = np.broadcast_to(np.arange(len(mask))[:, None], mask.shape)[mask]
    return sparse.csr_matrix((encoded["linear_gene_values"][mask].astype(np.float64),
                              (rows, encoded["linear_gene_ids"][mask])), shape=(len(mask), n_vocab))


def scores_of(regression, design, names):
    decision = regression.decision_function(design)
    classes = list(regression.classes_)
    full = np.zeros((design.shape[0], len(names)))
    bias_mean = regression.intercept_.mean()
    for j, name in enumerate(names):
        full[:, j] = decision[:, classes.index(name)] if name in classes else bias_mean
    return full


def saved_runs(dataset, split, train_labels, records=RECORDS, option="default"):
    """Per saved run of the split (option `option`, in `records`): `(seed, names, head, test_cells, references,
    saved, fit_part, validation)`: the label names (array), the head's logits (the logits less the linear share), the
    test cells' positions and reference names, the file's tensors, and the positions of the seed's fitting and
    validation cells among the training cells (`validation_split`, as `fit` holds them out)."""
    for path in sorted(glob.glob(str(records / f"{option}__{dataset}__{split}__seed*.safetensors"))):
        seed = int(path.rsplit("seed", 1)[1].split(".")[0])
        with safe_open(path, "np") as handle:
            meta, saved = handle.metadata(), {k: handle.get_tensor(k) for k in handle.keys()}
        names = np.array(json.loads(meta["labels"]))
        fit_part, validation = validation_split(train_labels, 0.1, seed)
        yield (seed, names, saved["logits"] - saved["linear_gene_scores"], saved["test_cells"],
               names[saved["references"]], saved, fit_part, validation)


def split_inputs(table, split_file, dataset, fold):
    """`(adata, labels, train, processor, design)` of a split: the session-15 processor (32 soft tokens, 1024 linear
    genes by excess) fitted on its training cells, and every cell's 1024-gene design matrix."""
    adata, labels, train, _ = load_split(dataset, split_file, fold)
    processor = build_processor(table, n_top_genes=32, n_linear_genes=1024, gene_selection="excess")
    processor.fit(adata[train])
    return adata, labels, train, processor, linear_design(processor(adata, return_tensors="np"), len(table.vocab))


def write_probe_report(name, out, keys, title, intro):
    """docs/benchmarks/<name>.json (`out`: per split, each column's mean) and .md: a table of the `keys` columns per
    split and their mean over the splits."""
    target = Path(__file__).resolve().parent.parent / "docs" / "benchmarks" / name
    target.with_suffix(".json").write_text(json.dumps(out, indent=1) + "\n")
    lines = [f"# {title}", "", intro, "", "| split | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    lines += [f"| {split} | " + " | ".join(f"{v[k]:.3f}" for k in keys) + " |" for split, v in out.items()]
    lines += ["| **mean** | " + " | ".join(f"{np.mean([v[k] for v in out.values()]):.3f}" for k in keys) + " |"]
    target.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main():
    table = build_gene_table()
    out = {}
    only = sys.argv[1:]
    for dataset, split, split_file, fold in splits(only or None):
        adata, labels, train, processor, design = split_inputs(table, split_file, dataset, fold)
        rows = []
        for seed, N, head, cells, reference, saved, fit_part, validation in saved_runs(dataset, split, labels[train]):
            names = list(N)
            fit_cells, val_cells = train[fit_part], train[validation]
            row, val_loss, val_f1 = {}, {}, {}
            for c in C_GRID:
                for balanced in (False, True):
                    name = f"C={c}" + ("+bal" if balanced else "")
                    if balanced and c != 1.0:
                        continue
                    regression = LogisticRegression(C=c, max_iter=3000, class_weight="balanced" if balanced else None)
                    regression.fit(design[fit_cells], labels[fit_cells])
                    test_scores = scores_of(regression, design[cells], names)
                    row[name] = score(reference, N[(head + test_scores).argmax(1)])["macro_f1"]
                    row[name + " lin"] = score(reference, N[test_scores.argmax(1)])["macro_f1"]
                    if not balanced:
                        probabilities = regression.predict_proba(design[val_cells])
                        val_loss[c] = log_loss(labels[val_cells], probabilities, labels=regression.classes_)
                        val_f1[c] = score(labels[val_cells], regression.predict(design[val_cells]))["macro_f1"]
                        if c == 1.0:
                            row["check"] = float(np.corrcoef(test_scores.ravel(), saved["linear_gene_scores"].ravel())[0, 1])
            best_loss, best_f1 = min(val_loss, key=val_loss.get), max(val_f1, key=lambda c: (val_f1[c], c))
            row["C=val"], row["C=valF1"] = row[f"C={best_loss}"], row[f"C={best_f1}"]
            row["chosen"], row["chosenF1"] = best_loss, best_f1
            row["saved"] = score(reference, N[saved["logits"].argmax(1)])["macro_f1"]
            rows.append(row)
            print(dataset, split, seed, {k: round(v, 3) for k, v in row.items()}, flush=True)
        out[f"{dataset}/{split}"] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    keys = [k for k in next(iter(out.values())) if not k.endswith(" lin")]
    print("MEAN", {k: round(float(np.mean([v[k] for v in out.values()])), 3) for k in next(iter(out.values()))})
    if only:
        return
    write_probe_report("linear_c_probe", out, keys,
                       "Regularisation of the linear gene scores, estimated from the default's saved test logits",
                       "`python benchmarks/linear_c_probe.py`: test macro-F1 of head + refitted regression, mean "
                       "over 3 seeds (see the script's docstring; `chosen`: mean validation-chosen C).")


if __name__ == "__main__":
    main()
