"""Does `refit_reference=True` cost anything on cells like the training cells? The shipped models annotate the test
cells of the split they were trained on, through the pipeline, with the training reference and with the reference
refitted on those test cells.

    python benchmarks/refit_reference.py

Writes docs/benchmarks/refit_reference.{json,md}. (On other batches and species it helps: docs/experiments.md.)
"""

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from splits import REPO, load_split, score, splits  # noqa: E402

import scinterpreter.models as zoo  # noqa: E402

DATASETS = {"pancreas-human": "baron_human_pancreas", "pancreas-mouse": "baron_mouse_pancreas",
            "pbmc-human": "pbmc3k_clustifyr"}


def main(argv=None):
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)  # --help only
    rows = []
    for name, dataset in DATASETS.items():
        (dataset, _, split_file, fold), = [s for s in splits([dataset]) if s[1] == "fixed"]
        adata, labels, _, test = load_split(dataset, split_file, fold)
        annotate = zoo.pipeline(name)
        row = {"model": name, "dataset": dataset, "n_test_cells": int(len(test))}
        for refit in (False, True):
            started = time.perf_counter()
            predicted = [r["label"] for r in annotate(adata[test], refit_reference=refit)]
            row["refitted" if refit else "training_reference"] = {
                **score(labels[test], predicted), "seconds": round(time.perf_counter() - started, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    (REPO / "docs/benchmarks/refit_reference.json").write_text(json.dumps(
        {"date": str(date.today()), "command": "python benchmarks/refit_reference.py", "runs": rows}, indent=1) + "\n")
    lines = ["# `refit_reference=True` on cells like the training cells", "",
             f"`python benchmarks/refit_reference.py` ({date.today()}, this CPU): each shipped model annotates the "
             "test cells of its own split through the pipeline, with the training cells' reference profile and with "
             "the profile refitted on those test cells.", "",
             "| model | test cells | training reference: acc / macro-F1 | refitted on the test cells |", "|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['model']} | {row['n_test_cells']} | {row['training_reference']['accuracy']:.3f} / "
                     f"{row['training_reference']['macro_f1']:.3f} | {row['refitted']['accuracy']:.3f} / "
                     f"{row['refitted']['macro_f1']:.3f} |")
    mean = {key: np.mean([row[key]["macro_f1"] for row in rows]) for key in ("training_reference", "refitted")}
    lines.append(f"| mean macro-F1 | | {mean['training_reference']:.3f} | {mean['refitted']:.3f} |")
    (REPO / "docs/benchmarks/refit_reference.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
