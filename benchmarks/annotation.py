"""Cell-annotation benchmark on every shared split: majority class, logistic regression on log-normalised
expression (L2 and L1), GenePT-w (kNN and logistic regression) and scInterpreter, with optional ablations.

    python benchmarks/annotation.py                                   # baselines + scInterpreter runs on the CPU
    python benchmarks/annotation.py --scinterpreter_records docs/benchmarks/sweep_gpu_2026-11-26.jsonl
    python benchmarks/annotation.py --ablations --scinterpreter_records ...

Splits: the 7 fixed splits of ../shared/data/scrna/splits and the 3 leave-one-batch-out folds of PBMC 3-batch.
scInterpreter figures come from `benchmarks/sweep.py` records (one JSON line per run, e.g. made on a lent GPU
from `benchmarks/pack_sweep_bundle.py`'s bundle), or, with no records given, from running the default recipe
here through the same code (`--run_scinterpreter`; hours on 2 CPU cores). Writes docs/benchmarks/results.json
(a list of records: dataset, split, method, accuracy, macro_f1, fit_seconds, predict_seconds) and results.md.
"""

import argparse
import json
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.multiclass import OneVsRestClassifier
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from processing_scinterpreter import ScInterpreterProcessor  # noqa: E402
from scinterpreter.data import read_h5ad, split_cells  # noqa: E402
from scinterpreter.genes import build_gene_table, load_gene_id_maps  # noqa: E402
from scinterpreter.plots import genept_w  # noqa: E402

SHARED = REPO.parent / "shared" / "data" / "scrna"
OUT = REPO / "docs" / "benchmarks"
DATASETS = ["baron_human_pancreas", "baron_mouse_pancreas", "mouse_immune_actinn", "pbmc3k_clustifyr",
            "pbmc4k_soupx", "pbmc68k_reduced_scanpy", "pbmc_3batch_symphony"]
LOBO_FOLDS = ["3pv1", "3pv2", "5p"]
# scInterpreter settings named as in benchmarks/sweep.py; "default" is train.py's default recipe.
DEFAULT = "default: k=64, 12 ep, token-RMS soft tokens"
PAPER_SETTINGS = {"base": "k=128, 6 ep", "rms": "k=128, 6 ep, RMS .14", "ep12": "k=128, 12 ep",
                  "rms+ep12": "k=128, 12 ep, RMS .14", "rms+k64+ep12": DEFAULT, "default": DEFAULT}
COMPARED = (DEFAULT, "k=128, 12 ep, RMS .14")
BEYOND_PAPER = {"offsets": "+ per-gene offsets, k=128, 6 ep"}
# Gene selection: the default recipe with ribosomal / mitochondrial genes kept out of each cell's top genes.
VARIANTS = {"default+exclude_ribo_mito": "default, no ribosomal / mitochondrial genes"}


def splits():
    """(dataset, split, split file, fold): the 7 fixed splits and the 3 leave-one-batch-out folds."""
    for name in DATASETS:
        yield name, "fixed", SHARED / "splits" / f"{name}.json", None
    for fold in LOBO_FOLDS:
        yield "pbmc_3batch_symphony", f"lobo_{fold}", SHARED / "splits" / "pbmc_3batch_symphony.lobo.json", fold


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
    return {"method": method, "accuracy": round(accuracy_score(test_y, predicted), 4),
            "macro_f1": round(f1_score(test_y, predicted, average="macro"), 4),
            "fit_seconds": round(fit_seconds, 2), "predict_seconds": round(time.perf_counter() - started, 3)}


def baselines(table):
    """Every baseline on every split, as records."""
    import scanpy as sc

    processor = ScInterpreterProcessor(gene_vocab=table.vocab, **load_gene_id_maps(table.vocab))
    records = []
    for dataset, split, split_file, fold in splits():
        adata = read_h5ad(SHARED / f"{dataset}.h5ad")
        labels = adata.obs["cell_type"].astype(str).to_numpy()
        train, test = split_cells(adata, labels, split_file, fold)
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


def scinterpreter_records(paths, names):
    """Sweep records (seed 0) of the named settings, as benchmark records."""
    records = []
    for path in paths:
        for line in Path(path).read_text().splitlines():
            run = json.loads(line)
            if run.get("error") or run["seed"] != 0 or run["name"] not in names:
                continue
            records.append({"dataset": run["dataset"], "split": run["split"],
                            "method": f"scInterpreter ({names[run['name']]})", "accuracy": run["accuracy"],
                            "macro_f1": run["macro_f1"], "fit_seconds": run["fit_seconds"],
                            "predict_seconds": run["predict_seconds"], "source": f"{Path(path).name}: {run['name']}"})
    return records


def run_scinterpreter(bundle: Path, plan: str):
    from sweep import make_plan, run_job

    records = []
    for job in make_plan(plan):
        run = run_job(bundle, job, "cpu")
        records.append({"dataset": run["dataset"], "split": run["split"], "method": f"scInterpreter ({job['name']})",
                        "accuracy": run["accuracy"], "macro_f1": run["macro_f1"], "fit_seconds": run["fit_seconds"],
                        "predict_seconds": run["predict_seconds"], "source": "this machine"})
        print(json.dumps(records[-1]), flush=True)
    return records


def write_markdown(records, ablations, meta, path):
    rows = list(dict.fromkeys((r["dataset"], r["split"]) for r in records))
    methods = list(dict.fromkeys(r["method"] for r in records))
    score = {(r["dataset"], r["split"], r["method"]): r for r in records}
    lines = [
        "# Cell-annotation benchmark on the shared splits",
        "",
        f"Made by `{meta['command']}` on {meta['date']}. Baselines ran on {meta['machine']} "
        f"({meta.get('baselines', 'fitted in this run')}); scInterpreter "
        f"figures: {meta['scinterpreter_source']}. Each cell: test accuracy / macro-F1; **bold** = best macro-F1 "
        "of the row. Macro-F1 is over the classes present in the reference or the predictions, so splits with "
        "1-4-cell classes move it in large steps.",
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
            cells.append(f"**{text}**" if record is not None and record["macro_f1"] == best else text)
        lines.append(f"| {dataset} | {split} | " + " | ".join(cells) + " |")
    means = []
    for method in methods:
        values = [score[d, s, method]["macro_f1"] for d, s in rows if (d, s, method) in score]
        means.append(f"{np.mean(values):.3f} ({len(values)})")
    lines.append("| **mean macro-F1 (splits)** | | " + " | ".join(means) + " |")

    best_lr = {}
    for r in records:
        if r["method"].startswith("logistic"):
            key = (r["dataset"], r["split"])
            best_lr[key] = max(best_lr.get(key, 0), r["macro_f1"])
    for compared in [m for m in methods if m.startswith("scInterpreter") and m[15:-1] in COMPARED]:
        covered = [(d, s) for d, s in rows if (d, s, compared) in score]
        gaps = [score[d, s, compared]["macro_f1"] - best_lr[d, s] for d, s in covered]
        lines += ["", f"## {compared} against the better logistic regression (macro-F1)", "",
                  f"Mean difference {np.mean(gaps):+.3f} over the {len(gaps)} splits it ran on; ahead or level on "
                  f"{sum(g >= 0 for g in gaps)}.", "",
                  "| dataset | split | best LogReg | scInterpreter | difference |", "|---|---|---|---|---|"]
        for dataset, split in rows:
            record = score.get((dataset, split, compared))
            if record is not None:
                gap = record["macro_f1"] - best_lr[dataset, split]
                lines.append(f"| {dataset} | {split} | {best_lr[dataset, split]:.3f} | {record['macro_f1']:.3f} | "
                             f"{gap:+.3f} |")
    if ablations:
        names = list(dict.fromkeys(r["method"] for r in ablations))
        ab_rows = list(dict.fromkeys((r["dataset"], r["split"]) for r in ablations))
        table = {(r["dataset"], r["split"], r["method"]): r for r in ablations}
        lines += ["", "## Ablations (seed 0; same recipe as the k=128 6-epoch setting unless the column says)", "",
                  "| dataset | split | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        for dataset, split in ab_rows:
            cells = [f"{table[dataset, split, n]['accuracy']:.3f} / {table[dataset, split, n]['macro_f1']:.3f}"
                     if (dataset, split, n) in table else "-" for n in names]
            lines.append(f"| {dataset} | {split} | " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scinterpreter_records", nargs="*", default=[],
                        help="benchmarks/sweep.py JSON-lines files to take scInterpreter figures from.")
    parser.add_argument("--run_scinterpreter", action="store_true",
                        help="Run the sweep plans here (CPU) instead of reading records.")
    parser.add_argument("--bundle", type=Path, default=REPO / ".sweep_bundle")
    parser.add_argument("--ablations", action="store_true",
                        help="Add the ablation table: random / shuffled gene embeddings, no LLM, depth, k.")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--reuse_baselines", type=Path, default=None,
                        help="Take the baseline records (every method but scInterpreter) from an earlier "
                             "results.json instead of fitting them again.")
    args = parser.parse_args(argv)

    table = build_gene_table()
    if args.reuse_baselines:
        records = [r for r in json.loads(args.reuse_baselines.read_text())
                   if not r["method"].startswith("scInterpreter")]
    else:
        records = baselines(table)
    ablation_names = {"base": "6 layers, k=128", "no_llm": "no LLM (mean pool)", "random_genes": "random genes",
                      "shuffled_genes": "shuffled genes", "L15": "15 layers", "L30": "30 layers", "k32": "k=32",
                      "k64": "k=64"}
    ablations = []
    if args.run_scinterpreter:
        records += run_scinterpreter(args.bundle, "splits")
        if args.ablations:
            ablations = run_scinterpreter(args.bundle, "ablations")
        source = "run here through benchmarks/sweep.py"
    else:
        records += scinterpreter_records(args.scinterpreter_records, {**PAPER_SETTINGS, **BEYOND_PAPER, **VARIANTS})
        if args.ablations:
            ablations = [r for r in scinterpreter_records(args.scinterpreter_records, ablation_names)
                         if (r["dataset"] == "baron_human_pancreas" or r["dataset"] == "pbmc3k_clustifyr"
                             or r["split"].startswith("lobo"))]
        source = ", ".join(Path(p).name for p in args.scinterpreter_records) or "none"
    meta = {"date": date.today().isoformat(),
            "machine": f"{platform.processor() or platform.machine()}, 2 CPU cores",
            "command": "python benchmarks/annotation.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "scinterpreter_source": source,
            "baselines": f"from {args.reuse_baselines}" if args.reuse_baselines else "fitted in this run"}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(records + ablations, indent=1) + "\n")
    (args.out / "results_meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    write_markdown(records, ablations, meta, args.out / "results.md")
    print(f"wrote {args.out / 'results.json'} and results.md")


if __name__ == "__main__":
    main()
