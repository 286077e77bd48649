"""Cross-species annotation: train on Baron mouse pancreas, annotate Baron human pancreas, and the reverse.

Mouse genes reach the model's human gene vocabulary through orthologs (the processor's `ortholog` rule). Scores
are on the target's cells whose type the source also has (labels compared case-insensitively).

    python benchmarks/cross_species.py [--epochs 6] [--out docs/benchmarks]
"""

import argparse
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", default="6")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks")
    parser.add_argument("--work", type=Path, default=Path("outputs/cross_species"))
    args = parser.parse_args(argv)
    from transformers import pipeline

    records = []
    for source, target in PAIRS:
        model_dir = args.work / f"{source}_model"
        started = time.perf_counter()
        trained = train.main(["--dataset", str(SHARED / f"{source}.h5ad"), "--split_file",
                              str(SHARED / "splits" / f"{source}.json"), "--num_train_epochs", args.epochs,
                              "--output_dir", str(model_dir), "--annotate_test_cells", "false"])
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
            "accuracy": round(accuracy_score(reference[shared], predicted[shared]), 4),
            "macro_f1": round(f1_score(reference[shared], predicted[shared], average="macro",
                                       labels=sorted(set(reference[shared]))), 4),
            "seconds": round(time.perf_counter() - started, 1),
        }
        records.append(record)
        print(json.dumps(record), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cross_species.json").write_text(json.dumps(records, indent=2) + "\n")


if __name__ == "__main__":
    main()
