"""Would a logistic regression on the model's own input, added to the model, help? Estimated from saved test logits.

For each split, the processor (fitted on the training cells) picks each cell's top-k genes by excess; an L2 logistic
regression is fitted on those genes and their values (`ceiling_probe.py`'s `[genes]` features) on the training
cells, and its test probabilities are combined with each saved run's temperature-scaled probabilities
(`benchmarks/recipes.py --logits_dir`): as a product of experts (summed log-probabilities, which is what adding the
two logits does) and as weighted means. Seconds per split; no training of the model.

    python benchmarks/fusion_probe.py benchmarks/records/test_logits_2026-11-27 --option k32+pool_class_and_mean
    python benchmarks/fusion_probe.py benchmarks/records/test_logits_2026-11-27 --option k32+pool_class_and_mean \
        --C 0.3 1 3 --k 32 64 128 --out docs/benchmarks/fusion_probe
"""

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ceiling_probe import chosen_genes  # noqa: E402
from splits import load_split, score, splits  # noqa: E402

from scinterpreter.build import build_processor  # noqa: E402
from scinterpreter.calibration import softmax  # noqa: E402
from scinterpreter.genes import build_gene_table  # noqa: E402

COMBINATIONS = {"product": None, "mean 0.3": 0.3, "mean 0.5": 0.5}


def saved_run(path: Path):
    """`(probabilities, reference names, test cells, labels)` of one saved run."""
    from safetensors import safe_open

    with safe_open(str(path), "np") as handle:
        metadata, tensors = handle.metadata(), {key: handle.get_tensor(key) for key in handle.keys()}
    labels = json.loads(metadata["labels"])
    if "linear_gene_scores" in tensors:
        raise SystemExit(f"{path} is a run with linear gene scores (its temperature is the sum's): pass runs without")
    probabilities = softmax(tensors["logits"], json.loads(metadata["temperature"]))
    return probabilities, np.array(labels)[tensors["references"]], tensors["test_cells"], labels


def combine(model, linear, how):
    if how is None:
        return np.log(model + 1e-9) + np.log(linear + 1e-9)
    return (1 - how) * model + how * linear


def main(argv=None):
    from sklearn.linear_model import LogisticRegression

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logits_dir")
    parser.add_argument("--option", required=True, help="the runs' option name in the saved files")
    parser.add_argument("--splits", nargs="*")
    parser.add_argument("--C", nargs="+", type=float, default=[1.0], help="inverse L2 strengths")
    parser.add_argument("--k", nargs="+", type=int, default=[32], help="genes per cell the regression reads")
    parser.add_argument("--balance", nargs="+", type=float, default=[0.0],
                        help="weigh each training cell by (cells of its type)^-power in the regression")
    parser.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)
    table = build_gene_table()
    rows = []
    for dataset, split, split_file, fold in splits(args.splits):
        runs = sorted(Path(args.logits_dir).glob(f"{args.option}__{dataset}__{split}__seed*.safetensors"))
        if not runs:
            continue
        adata, labels, train, test = load_split(dataset, split_file, fold)
        position = {cell: i for i, cell in enumerate(test)}
        features_of = {}
        for k in args.k:
            processor = build_processor(table, n_top_genes=k, gene_selection="excess")
            processor.fit(adata[train])
            features_of[k] = chosen_genes(processor(adata, return_tensors="np"), len(table.vocab))
        for k, inverse_regularization, power in itertools.product(args.k, args.C, args.balance):
            features = features_of[k]
            _, inverse, counts = np.unique(labels[train], return_inverse=True, return_counts=True)
            regression = LogisticRegression(C=inverse_regularization, max_iter=3000).fit(
                features[train], labels[train], sample_weight=counts[inverse].astype(float) ** -power)
            linear_all = regression.predict_proba(features[test])
            row = {"dataset": dataset, "split": split, "k": k, "C": inverse_regularization, "balance": power,
                   "seeds": []}
            for path in runs:
                probabilities, references, cells, names = saved_run(path)
                linear = np.zeros_like(probabilities)  # in the model's label order; types it never saw stay 0
                for j, name in enumerate(names):
                    if name in regression.classes_:
                        linear[:, j] = linear_all[[position[c] for c in cells], list(regression.classes_).index(name)]
                names = np.array(names)
                seed = {"seed": int(path.stem.rsplit("seed", 1)[1]),
                        "model": score(references, names[probabilities.argmax(-1)])["macro_f1"],
                        "regression": score(references, names[linear.argmax(-1)])["macro_f1"]}
                for label, how in COMBINATIONS.items():
                    seed[label] = score(references, names[combine(probabilities, linear, how).argmax(-1)])["macro_f1"]
                row["seeds"].append(seed)
            row.update({key: round(float(np.mean([s[key] for s in row["seeds"]])), 4)
                        for key in ["model", "regression", *COMBINATIONS]})
            rows.append(row)
            print(json.dumps({key: value for key, value in row.items() if key != "seeds"}), flush=True)
    lines = ["# Fusion probe: the model's saved test probabilities combined with a logistic regression on its input",
             "", f"`python benchmarks/fusion_probe.py {' '.join(argv if argv is not None else sys.argv[1:])}`. Test "
             "macro-F1, mean over the saved seeds; `product`: summed log-probabilities (the two logits added), "
             "`mean w`: (1 - w) model + w regression.", "",
             "| k | C | balance | splits | model | regression | " + " | ".join(COMBINATIONS) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(COMBINATIONS)]
    for k, inverse_regularization, power in itertools.product(args.k, args.C, args.balance):
        chosen = [r for r in rows if (r["k"], r["C"], r["balance"]) == (k, inverse_regularization, power)]
        means = [f"{np.mean([r[key] for r in chosen]):.3f}" for key in ["model", "regression", *COMBINATIONS]]
        lines.append(f"| {k} | {inverse_regularization:g} | {power:g} | {len(chosen)} | " + " | ".join(means) + " |")
    lines += ["", "| dataset | split | k | C | balance | model | regression | " + " | ".join(COMBINATIONS) + " |",
              "|---|---|---|---|---|---|---|" + "---|" * len(COMBINATIONS)]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['split']} | {r['k']} | {r['C']:g} | {r['balance']:g} | " + " | ".join(
            f"{r[key]:.3f}" for key in ["model", "regression", *COMBINATIONS]) + " |")
    report = "\n".join(lines) + "\n"
    if args.out:
        Path(f"{args.out}.json").write_text(json.dumps(rows, indent=1) + "\n")
        Path(f"{args.out}.md").write_text(report)
    else:
        print(report)


if __name__ == "__main__":
    main()
