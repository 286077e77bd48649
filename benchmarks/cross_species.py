"""Cross-species annotation: train on Baron mouse pancreas, annotate Baron human pancreas, and the reverse.

Mouse genes reach the model's human gene vocabulary through orthologs (the processor's `ortholog` rule). Scores
are on the target's cells whose type the source also has (labels compared case-insensitively). Beside each
scInterpreter model (`train.py` with its defaults, on the source's fixed training split), logistic regression (L2,
C=1) trained on the same source cells and applied to the target on the genes both match in the model's vocabulary
(log-normalised expression, the same ortholog matching).

    python benchmarks/cross_species.py [--epochs N] [--out docs/benchmarks] [--reuse_models]
    python benchmarks/cross_species.py --render [docs/benchmarks/cross_species.json]   # only the markdown

Each pair is also scored with the model's reference profile refitted on the target's own (unlabelled) cells
(`target_reference`): the excess ranking then measures each gene against the target species' average cell.
`--reuse_models` scores model folders already in `--work` instead of training them again. Writes
cross_species.json (`{"meta", "records"}`) and cross_species.md, the report rendered from that JSON alone; what the
results mean is discussed in docs/experiments.md.
"""

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from splits import REPO, SHARED, load_split, score  # noqa: E402

PAIRS = [("baron_mouse_pancreas", "baron_human_pancreas"), ("baron_human_pancreas", "baron_mouse_pancreas")]


def logistic_regression_transfer(processor, source, target, target_labels, scored):
    """L2 logistic regression fitted on the source's training cells and applied to the target, on the genes both
    match in the vocabulary (log-normalised, matched by the same processor rules)."""
    from sklearn.linear_model import LogisticRegression

    source_data, source_labels, train, _ = load_split(source, SHARED / "splits" / f"{source}.json")
    source_labels = np.char.lower(source_labels.astype(str))
    source_values, source_genes = processor.normalize(source_data[train])
    target_values, target_genes = processor.normalize(target)
    genes, source_columns, target_columns = np.intersect1d(source_genes, target_genes, return_indices=True)
    classifier = LogisticRegression(C=1.0, max_iter=3000).fit(source_values[:, source_columns], source_labels[train])
    predicted = classifier.predict(target_values[:, target_columns])
    return {"shared_genes": int(len(genes)), **shared_type_scores(target_labels, predicted, scored)}


def shared_type_scores(reference, predicted, shared):
    """Accuracy and macro-F1 over the target cells whose type the source also has."""
    return score(reference[shared], predicted[shared], labels=sorted(set(reference[shared])))


def score_with_target_reference(annotate, adata, reference, shared):
    """Scores on the target when the processor's reference profile is refitted on the target cells."""
    processor = copy.deepcopy(annotate.processor).fit(adata)
    refitted = type(annotate)(model=annotate.model, processor=processor)
    predicted = np.array([r["label"].lower() for r in refitted(adata, batch_size=64)])
    return shared_type_scores(reference, predicted, shared)


def render(saved) -> str:
    """The markdown report of a cross_species.json, every figure taken from it. `saved`: `{"meta", "records"}`, or
    the bare list of records that runs before 2026-11-27 wrote (no date, command or machine)."""
    meta, records = (saved["meta"], saved["records"]) if isinstance(saved, dict) else ({}, saved)
    if meta:
        made = (f"Made by `{meta['command']}` on {meta['date']} ({meta['machine']}; backbone "
                f"{meta['backbone_dtype']}); each model: `train.py` with its defaults, seed {meta['seed']}, "
                f"{meta['epochs']} epochs")
    else:
        made = ("Made by `python benchmarks/cross_species.py` (command, date, machine, seed and epochs not recorded in "
                "this JSON); each model: `train.py` with its defaults")
    shared_types = sorted({t for r in records for t in r["shared_types"]})
    lines = [
        "# Cross-species annotation through orthologs",
        "",
        f"{made}, trained on the source's fixed training split. Target cells are scored on the types both datasets "
        f"have (labels compared case-insensitively: {', '.join(shared_types)}); mouse genes reach the human "
        "vocabulary through orthologs. Beside each model: the same model with its reference profile refitted on the "
        "target's own unlabelled cells (`processor.fit(target)`, no retraining), and L2 logistic regression fitted on "
        "the same source training cells and applied to the target on the genes both match in the vocabulary "
        "(log-normalised, the same ortholog matching). Each cell: accuracy / macro-F1 over the shared types; "
        "**bold**: the best target macro-F1 of the row.",
        "",
        "| source -> target | source test | target cells scored | scInterpreter on the target | reference refitted "
        "on the target | logistic regression on the target (genes) |",
        "|---|---|---|---|---|---|",
    ]
    for r in records:
        cells = {"model": r, "refitted": r.get("target_reference"), "lr": r["logistic_regression"]}
        best = max(c["macro_f1"] for c in cells.values() if c)
        text = {name: "not recorded" if c is None else f"{c['accuracy']:.3f} / {c['macro_f1']:.3f}"
                for name, c in cells.items()}
        text = {name: f"**{t}**" if cells[name] and cells[name]["macro_f1"] == best else t
                for name, t in text.items()}
        lines.append(f"| {r['source']} -> {r['target']} | {r['source_test']['accuracy']:.3f} / "
                     f"{r['source_test']['macro_f1']:.3f} | {r['n_target_cells_scored']:,} of "
                     f"{r['n_target_cells']:,} | {text['model']} | {text['refitted']} | {text['lr']} "
                     f"({r['logistic_regression']['shared_genes']:,}) |")
    lines += ["", "Gene matching on each target:", ""]
    lines += [f"- {r['source']} -> {r['target']}: {r['target_genes_matched']}" for r in records]
    lines += ["", "What the figures mean, and the earlier runs: docs/experiments.md, \"Cross-species annotation "
              "through orthologs\"."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", default=None, help="training epochs (default: train.py's)")
    parser.add_argument("--seed", default="0")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks")
    parser.add_argument("--work", type=Path, default=Path("outputs/cross_species"))
    parser.add_argument("--reuse_models", action="store_true")
    parser.add_argument("--render", nargs="?", const=REPO / "docs" / "benchmarks" / "cross_species.json", type=Path,
                        metavar="JSON", help="only the markdown, from a cross_species.json; trains and scores nothing")
    args = parser.parse_args(argv)
    if args.render:
        args.render.with_suffix(".md").write_text(render(json.loads(args.render.read_text())))
        return
    import platform
    from datetime import date

    from transformers import pipeline

    import train
    from scinterpreter.data import read_h5ad

    from scinterpreter.training import ScInterpreterTrainingArguments

    epochs = json.loads(args.epochs) if args.epochs else ScInterpreterTrainingArguments.num_train_epochs
    records = []
    for source, target in PAIRS:
        model_dir = args.work / f"{source}_model"
        started = time.perf_counter()
        if args.reuse_models and (model_dir / "metrics.json").is_file():
            trained = json.loads((model_dir / "metrics.json").read_text())
        else:
            trained = train.main(["--dataset", str(SHARED / f"{source}.h5ad"), "--split_file",
                                  str(SHARED / "splits" / f"{source}.json"), "--num_train_epochs", str(epochs),
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
    meta = {"date": date.today().isoformat(),
            "command": " ".join(["python benchmarks/cross_species.py", *(argv if argv is not None else sys.argv[1:])]),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores",
            "backbone_dtype": str(annotate.model.model.backbone_dtype).replace("torch.", ""),
            "seed": json.loads(args.seed), "epochs": epochs,
            "models": "reused from --work" if args.reuse_models else "trained in this run"}
    args.out.mkdir(parents=True, exist_ok=True)
    saved = {"meta": meta, "records": records}
    (args.out / "cross_species.json").write_text(json.dumps(saved, indent=2) + "\n")
    (args.out / "cross_species.md").write_text(render(saved))


if __name__ == "__main__":
    main()
