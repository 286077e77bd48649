"""Cell-annotation benchmark on every shared split: majority class, logistic regression on log-normalised
expression (L2 and L1), GenePT-w (kNN and logistic regression), and scInterpreter runs of the product's own
training code (`benchmarks/recipes.py` records, one per seed, reported as the mean over seeds).

    python benchmarks/annotation.py --records benchmarks/records/recipes_cpu_2026-11-26.jsonl
    python benchmarks/annotation.py --reuse_baselines benchmarks/records/baselines_2026-11-26.json --records ...

Splits: the 7 fixed splits of ../shared/data/scrna/splits and the 3 leave-one-batch-out folds of PBMC 3-batch.
Fitting the baselines writes their raw records to benchmarks/records/baselines_<date>.json ({"meta", "records"});
`--reuse_baselines` reads such a file instead of fitting them again, so the report is rebuilt from records alone.
Writes docs/benchmarks/results.json (records: dataset, split, method, seed, accuracy, macro_f1, ...; scInterpreter
has one record per seed and one with seed "mean"), results_meta.json and results.md.
"""

import argparse
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from scinterpreter.build import build_processor  # noqa: E402
from scinterpreter.genes import build_gene_table  # noqa: E402
from scinterpreter.plots import genept_w  # noqa: E402
from recipes import option_against_today  # noqa: E402
from splits import best_logistic_regression, load_split, score, splits  # noqa: E402

OUT = REPO / "docs" / "benchmarks"
RECORDS = REPO / "benchmarks" / "records"
# recipes.py options as the table names them; "default" is today's `Recipe()` + `ScInterpreterTrainingArguments()`
# (a run is named by how its saved recipe differs from today's, not by the option it ran under).
OPTION_NAMES = {"default": "default", "no_llm": "default, no LLM (linear gene scores + mean of the soft tokens)",
                "session15_linear": "session-15 default: linear gene scores on each cell's first 1024 genes, "
                                    "unweighted, added as fitted",
                "no_llm+session15_linear": "session-15 default, no LLM",
                "linear_tokens_only+no_head_temperature+unweighted_linear":
                    "session-14 default: linear gene scores on the 32 soft tokens' genes, added to the head as is",
                "no_llm+linear_tokens_only+no_head_temperature+unweighted_linear": "session-14 default, no LLM",
                "paper_selection": "default, genes chosen by expression (the paper's rule)",
                "no_linear_genes": "session-12 default: no linear gene scores",
                "no_llm+no_linear_genes": "session-12 default, no LLM",
                "k64+pool_class_token+no_linear_genes": "session-9 default: k = 64, class token only",
                "k64+no_llm+no_linear_genes": "session-9 default, no LLM",
                "k64+no_gene_dropout+pool_class_token+no_linear_genes":
                    "session-4 default: k = 64, class token, no gene dropout",
                "k64+no_gene_dropout+no_llm+no_linear_genes": "session-4 default, no LLM",
                "k64+lora8+pool_class_token+no_linear_genes": "session-9 default + LoRA rank 8",
                "k64+lora8+no_gene_dropout+pool_class_token+no_linear_genes": "session-4 default + LoRA rank 8"}


def log_normalised(adata):
    """Per-cell total 1e4 + log1p for raw counts; data shipped log-normalised are used as they are."""
    import scanpy as sc

    adata = adata.copy()
    if adata.uns.get("count_type", "raw") == "raw":
        sc.pp.normalize_total(adata, target_sum=1e4)
        sc.pp.log1p(adata)
    return adata


def _score(method, classifier, train_x, train_y, test_x, test_y):
    started = time.perf_counter()
    classifier.fit(train_x, train_y)
    fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    predicted = classifier.predict(test_x)
    return {"method": method, **score(test_y, predicted), "fit_seconds": round(fit_seconds, 2),
            "predict_seconds": round(time.perf_counter() - started, 3)}


def baselines(table):
    """Every baseline on every split, as records."""
    import scanpy as sc

    processor = build_processor(table)
    records = []
    for dataset, split, split_file, fold in splits():
        adata, labels, train, test = load_split(dataset, split_file, fold)
        normalised = log_normalised(adata)
        if normalised.n_vars > 5000:  # top 2000 variable genes of the training cells, as DESIGN.md's references
            variable = sc.pp.highly_variable_genes(normalised[train], n_top_genes=2000, inplace=False)
            normalised = normalised[:, variable["highly_variable"].to_numpy()]
        expression = normalised.X.toarray() if hasattr(normalised.X, "toarray") else np.asarray(normalised.X)
        values, gene_ids = processor.normalize(adata)
        genept = genept_w(values, gene_ids, table.embeddings)
        candidates = [
            ("majority class", DummyClassifier(strategy="most_frequent"), expression),
            ("logistic regression (L2)", LogisticRegression(max_iter=3000), expression),
            ("logistic regression (L1)", OneVsRestClassifier(LogisticRegression(penalty="l1", solver="liblinear",
                                                                                 max_iter=3000)), expression),
            ("GenePT-w + kNN", KNeighborsClassifier(n_neighbors=10, metric="cosine"), genept),
            ("GenePT-w + logistic regression", make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)),
             genept),
        ]
        for method, classifier, features in candidates:
            record = {"dataset": dataset, "split": split,
                      **_score(method, classifier, features[train], labels[train], features[test], labels[test])}
            records.append(record)
            print(json.dumps(record), flush=True)
    return records


def scinterpreter_records(paths):
    """`benchmarks/recipes.py` records as benchmark records: one per run (with its seed), then the mean over the
    seeds of each split and option (`seed: "mean"`, `n_seeds`)."""
    runs = []
    for path in paths:
        for line in Path(path).read_text().splitlines():
            run = json.loads(line)
            if run.get("error"):
                continue
            option = option_against_today(run)
            runs.append({"dataset": run["dataset"], "split": run["split"], "method": method_name(option),
                         "seed": run["seed"], "accuracy": run["accuracy"], "macro_f1": run["macro_f1"],
                         "train_seconds": run["train_seconds"], "device": run.get("device", "cpu"),
                         "source": f"{Path(path).name}: ran as {run['option']!r}, today {option!r}"})
    means = []
    for key in dict.fromkeys((r["dataset"], r["split"], r["method"]) for r in runs):
        group = [r for r in runs if (r["dataset"], r["split"], r["method"]) == key]
        means.append({"dataset": key[0], "split": key[1], "method": key[2], "seed": "mean",
                      "n_seeds": len(group), "accuracy": round(float(np.mean([r["accuracy"] for r in group])), 4),
                      "macro_f1": round(float(np.mean([r["macro_f1"] for r in group])), 4),
                      "macro_f1_range": [min(r["macro_f1"] for r in group), max(r["macro_f1"] for r in group)],
                      "source": group[0]["source"]})
    return runs, means


def method_name(option: str) -> str:
    return f"scInterpreter ({OPTION_NAMES.get(option, option)})"


def write_markdown(records, meta, path):
    """The benchmark table (scInterpreter: mean over seeds), the gap to the better logistic regression, the runs."""
    baselines = meta["baselines"]
    means = [r for r in records if r.get("seed") in (None, "mean")]
    rows = list(dict.fromkeys((r["dataset"], r["split"]) for r in means))
    # Baselines, then today's default, its ablations, and the runs of other recipes (stable order within each).
    methods = sorted(dict.fromkeys(r["method"] for r in means),
                     key=lambda m: (m.startswith("scInterpreter"), m != method_name("default"),
                                    not m.startswith(method_name("default")[:-1])))
    score = {(r["dataset"], r["split"], r["method"]): r for r in means}
    lines = [
        "# Cell-annotation benchmark on the shared splits",
        "",
        f"Made by `{meta['command']}` on {meta['date']}. Baselines: `{baselines['source']}`, fitted on "
        f"{baselines['date']} ({baselines['machine']}) by `{baselines['command']}`; scInterpreter figures: "
        f"{meta['scinterpreter_source']}, "
        "runs of the product's own training code (`scinterpreter.training.fit` through `benchmarks/recipes.py`), "
        "shown as the mean over seeds (count in brackets; every run is listed below). Each cell: test accuracy / "
        "macro-F1; **bold** = best macro-F1 of the row. Macro-F1 is over the classes present in the reference or "
        "the predictions, so splits with classes of a few test cells move it in large steps.",
        "",
        "| dataset | split | " + " | ".join(methods) + " |",
        "|---|---|" + "---|" * len(methods),
    ]
    for dataset, split in rows:
        best = max(score[dataset, split, m]["macro_f1"] for m in methods if (dataset, split, m) in score)
        cells = []
        for method in methods:
            record = score.get((dataset, split, method))
            text = "-" if record is None else f"{record['accuracy']:.3f} / {record['macro_f1']:.3f}"
            if record is not None and "n_seeds" in record:
                text += f" ({record['n_seeds']})"
            cells.append(f"**{text}**" if record is not None and record["macro_f1"] == best else text)
        lines.append(f"| {dataset} | {split} | " + " | ".join(cells) + " |")
    mean_cells = []
    for method in methods:
        values = [score[d, s, method]["macro_f1"] for d, s in rows if (d, s, method) in score]
        mean_cells.append(f"{np.mean(values):.3f} ({len(values)})")
    lines.append("| **mean macro-F1 (splits)** | | " + " | ".join(mean_cells) + " |")

    best_lr = best_logistic_regression(means)
    for compared in [m for m in methods if m.startswith("scInterpreter")]:
        covered = [(d, s) for d, s in rows if (d, s, compared) in score]
        gaps = [score[d, s, compared]["macro_f1"] - best_lr[d, s] for d, s in covered]
        lines += ["", f"## {compared} against the better logistic regression (macro-F1, mean over seeds)", "",
                  f"Mean difference {np.mean(gaps):+.3f} over the {len(gaps)} splits it ran on; ahead or level on "
                  f"{sum(g >= 0 for g in gaps)}.", "",
                  "| dataset | split | best LogReg | scInterpreter (seeds: min-max) | difference |", "|---|---|---|---|---|"]
        for dataset, split in covered:
            record = score[dataset, split, compared]
            low, high = record.get("macro_f1_range", [record["macro_f1"]] * 2)
            lines.append(f"| {dataset} | {split} | {best_lr[dataset, split]:.3f} | {record['macro_f1']:.3f} "
                         f"({low:.3f}-{high:.3f}) | {record['macro_f1'] - best_lr[dataset, split]:+.3f} |")
    runs = [r for r in records if isinstance(r.get("seed"), int)]
    if runs:
        lines += ["", "## Every scInterpreter run", "", "| dataset | split | method | seed | accuracy | macro-F1 | "
                  "training (s) | device |", "|---|---|---|---|---|---|---|---|"]
        for r in runs:
            lines.append(f"| {r['dataset']} | {r['split']} | {r['method']} | {r['seed']} | {r['accuracy']:.3f} | "
                         f"{r['macro_f1']:.3f} | {r['train_seconds']:.0f} | {r['device']} |")
    path.write_text("\n".join(lines) + "\n")


def read_baselines(path: Path):
    """`(records, meta)` of a baselines file (`{"meta", "records"}`); scInterpreter records are left out."""
    saved = json.loads(path.read_text())
    records = [r for r in saved["records"] if not r["method"].startswith("scInterpreter")]
    return records, {**saved["meta"], "source": str(path)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", nargs="*", default=[],
                        help="benchmarks/recipes.py JSON-lines files to take scInterpreter figures from.")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--reuse_baselines", type=Path, default=None,
                        help="Take the baseline records (every method but scInterpreter) from a baselines file of "
                             "benchmarks/records instead of fitting them again.")
    args = parser.parse_args(argv)
    command = "python benchmarks/annotation.py " + " ".join(argv if argv is not None else sys.argv[1:])
    today = date.today().isoformat()

    if args.reuse_baselines:
        records, baseline_meta = read_baselines(args.reuse_baselines)
    else:
        records = baselines(build_gene_table())
        path = RECORDS / f"baselines_{today}.json"
        baseline_meta = {"date": today, "machine": f"{platform.processor() or platform.machine()}, "
                                                   f"{os.cpu_count()} CPU cores", "command": command}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"meta": baseline_meta, "records": records}, indent=1) + "\n")
        baseline_meta["source"] = str(path.relative_to(REPO))
    runs, means = scinterpreter_records(args.records)
    meta = {"date": today, "command": command,
            "scinterpreter_source": ", ".join(Path(p).name for p in args.records) or "none",
            "baselines": baseline_meta}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(records + means + runs, indent=1) + "\n")
    (args.out / "results_meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    write_markdown(records + means + runs, meta, args.out / "results.md")
    print(f"wrote {args.out / 'results.json'} and results.md")


if __name__ == "__main__":
    main()
