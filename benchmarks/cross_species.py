"""Cross-species annotation: train on Baron mouse pancreas, annotate Baron human pancreas, and the reverse.

Mouse genes reach the model's human gene vocabulary through orthologs (the processor's `ortholog` rule). Scores
are on the target's cells whose type the source also has (labels compared case-insensitively). Beside each
scInterpreter model (`train.py` with its defaults, on the source's fixed training split), logistic regression (L2,
C=1) trained on the same source cells and applied to the target on the genes both match in the model's vocabulary
(log-normalised expression, the same ortholog matching).

    python benchmarks/cross_species.py [--epochs 12] [--out docs/benchmarks] [--reuse_models]

Each pair is also scored with the model's reference profile refitted on the target's own (unlabelled) cells
(`target_reference`): the excess ranking then measures each gene against the target species' average cell.
`--reuse_models` scores model folders already in `--work` instead of training them again.
"""

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import train  # noqa: E402
from scinterpreter.data import read_h5ad  # noqa: E402

SHARED = REPO.parent / "shared" / "data" / "scrna"
PAIRS = [("baron_mouse_pancreas", "baron_human_pancreas"), ("baron_human_pancreas", "baron_mouse_pancreas")]


def logistic_regression_transfer(processor, source, target, target_labels, scored):
    """L2 logistic regression fitted on the source's training cells and applied to the target, on the genes both
    match in the vocabulary (log-normalised, matched by the same processor rules)."""
    from sklearn.linear_model import LogisticRegression

    from scinterpreter.data import split_cells

    source_data = read_h5ad(SHARED / f"{source}.h5ad")
    source_labels = source_data.obs["cell_type"].astype(str).str.lower().to_numpy()
    train, _ = split_cells(source_data, source_labels, SHARED / "splits" / f"{source}.json")
    source_values, source_genes = processor.normalize(source_data[train])
    target_values, target_genes = processor.normalize(target)
    genes, source_columns, target_columns = np.intersect1d(source_genes, target_genes, return_indices=True)
    classifier = LogisticRegression(C=1.0, max_iter=3000).fit(source_values[:, source_columns], source_labels[train])
    predicted = classifier.predict(target_values[:, target_columns])
    reference = target_labels[scored]
    return {"shared_genes": int(len(genes)), "accuracy": round(accuracy_score(reference, predicted[scored]), 4),
            "macro_f1": round(f1_score(reference, predicted[scored], average="macro", labels=sorted(set(reference))), 4)}


def shared_type_scores(reference, predicted, shared):
    """Accuracy and macro-F1 over the target cells whose type the source also has."""
    return {"accuracy": round(accuracy_score(reference[shared], predicted[shared]), 4),
            "macro_f1": round(f1_score(reference[shared], predicted[shared], average="macro",
                                       labels=sorted(set(reference[shared]))), 4)}


def score_with_target_reference(annotate, adata, reference, shared):
    """Scores on the target when the processor's reference profile is refitted on the target cells."""
    processor = copy.deepcopy(annotate.processor).fit(adata)
    refitted = type(annotate)(model=annotate.model, processor=processor)
    predicted = np.array([r["label"].lower() for r in refitted(adata, batch_size=64)])
    return shared_type_scores(reference, predicted, shared)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", default="12")
    parser.add_argument("--seed", default="0")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks")
    parser.add_argument("--work", type=Path, default=Path("outputs/cross_species"))
    parser.add_argument("--reuse_models", action="store_true")
    args = parser.parse_args(argv)
    from transformers import pipeline

    records = []
    for source, target in PAIRS:
        model_dir = args.work / f"{source}_model"
        started = time.perf_counter()
        if args.reuse_models and (model_dir / "metrics.json").is_file():
            trained = json.loads((model_dir / "metrics.json").read_text())
        else:
            trained = train.main(["--dataset", str(SHARED / f"{source}.h5ad"), "--split_file",
                                  str(SHARED / "splits" / f"{source}.json"), "--num_train_epochs", args.epochs,
                                  "--seed", args.seed, "--output_dir", str(model_dir), "--annotate_test_cells",
                                  "false"])
        annotate = pipeline("cell-annotation", model=str(model_dir), trust_remote_code=True)
        adata = read_h5ad(SHARED / f"{target}.h5ad")
        match = annotate.processor.match_genes(adata.var_names)
        predicted = np.array([r["label"].lower() for r in annotate(adata, batch_size=64)])
        reference = adata.obs["cell_type"].astype(str).str.lower().to_numpy()
        known = {label.lower() for label in annotate.model.config.id2label.values()}
        shared = np.isin(reference, sorted(known))
        record = {
            "source": source, "target": target, "source_test": trained["test"],
            "target_genes_matched": match.summary(),
            "shared_types": sorted(set(reference[shared])),
            "n_target_cells_scored": int(shared.sum()), "n_target_cells": int(len(reference)),
            **shared_type_scores(reference, predicted, shared),
            "target_reference": score_with_target_reference(annotate, adata, reference, shared),
            "logistic_regression": logistic_regression_transfer(annotate.processor, source, adata, reference, shared),
            "seconds": round(time.perf_counter() - started, 1),
        }
        records.append(record)
        print(json.dumps(record), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cross_species.json").write_text(json.dumps(records, indent=2) + "\n")


if __name__ == "__main__":
    main()
