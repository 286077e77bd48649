"""Compare gene text encoders: marker-gene neighbours and GenePT-w macro-F1 on the shared splits.

GenePT-w: each cell = expression-weighted mean of its genes' embeddings (log-normalised expression, every gene
the processor matches), L2-normalised, then logistic regression on the fixed training cells.

    python benchmarks/gene_encoders.py [--encoders wordllama minilm random shuffled] [--out docs]

Writes docs/gene_encoders.md, docs/gene_encoders.json and docs/gene_encoders.png.
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
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gene_matching_scinterpreter import GeneMatcher  # noqa: E402
from processing_scinterpreter import ScInterpreterProcessor  # noqa: E402
from scinterpreter.data import read_h5ad, split_cells  # noqa: E402
from scinterpreter.genes import build_gene_table, load_gene_descriptions, load_gene_id_maps  # noqa: E402
from scinterpreter.plots import genept_w  # noqa: E402

SHARED = REPO.parent / "shared" / "data" / "scrna"
MARKERS = ["CD3E", "CD19", "MS4A1", "CD14", "NKG7", "PTPRC", "INS", "GCG", "KRT19", "PRSS1"]
DATASETS = ["baron_human_pancreas", "baron_mouse_pancreas", "mouse_immune_actinn", "pbmc3k_clustifyr",
            "pbmc4k_soupx", "pbmc68k_reduced_scanpy", "pbmc_3batch_symphony"]
LOBO = ("pbmc_3batch_symphony", "pbmc_3batch_symphony.lobo.json", ["3pv1", "3pv2", "5p"])


def splits():
    """(dataset, split name, split file, fold) for the 7 fixed splits and the 3 leave-one-batch-out folds."""
    for name in DATASETS:
        yield name, "fixed", SHARED / "splits" / f"{name}.json", None
    name, file, folds = LOBO
    for fold in folds:
        yield name, f"leave-{fold}-out", SHARED / "splits" / file, fold


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoders", nargs="+", default=["wordllama", "minilm", "random", "shuffled"])
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    args = parser.parse_args(argv)

    # The genes the benchmark data measure (matched as the processor matches them): embedding all 46k
    # descriptions with the slower encoders would cost an hour on 2 cores and change none of the scores.
    full_vocab = load_gene_descriptions()
    matcher = GeneMatcher(list(full_vocab["symbol"]), **load_gene_id_maps(full_vocab["symbol"]))
    measured = set()
    for name in DATASETS:
        matched = matcher.match(read_h5ad(SHARED / f"{name}.h5ad", backed="r").var_names)
        measured.update(matched.vocab_ids.tolist())
    descriptions = full_vocab.iloc[sorted(measured)].reset_index(drop=True)
    print(f"{len(descriptions)} genes measured in the shared datasets", flush=True)
    tables, encode_seconds = {}, {}
    for encoder in args.encoders:
        started = time.perf_counter()
        tables[encoder] = build_gene_table(descriptions, encoder=encoder)
        encode_seconds[encoder] = time.perf_counter() - started
        print(f"{encoder}: {tables[encoder].embeddings.shape} in {encode_seconds[encoder]:.0f} s", flush=True)
    vocab = tables[args.encoders[0]].vocab
    processor = ScInterpreterProcessor(gene_vocab=vocab, **load_gene_id_maps(vocab))

    neighbours = {}
    for encoder, table in tables.items():
        row = {symbol: i for i, symbol in enumerate(table.vocab)}
        neighbours[encoder] = {}
        for marker in MARKERS:
            similarity = table.embeddings @ table.embeddings[row[marker]]
            order = [i for i in np.argsort(-similarity) if i != row[marker]][:5]
            neighbours[encoder][marker] = [table.vocab[i] for i in order]

    records = []
    for name, split, split_file, fold in splits():
        adata = read_h5ad(SHARED / f"{name}.h5ad")
        labels = adata.obs["cell_type"].astype(str).to_numpy()
        train, test = split_cells(adata, labels, split_file, fold)
        values, gene_ids = processor.normalize(adata)
        for encoder, table in tables.items():
            features = genept_w(values, gene_ids, table.embeddings)
            # Standardised features: unit-norm averages of thousands of genes differ by small amounts, which an
            # unscaled, L2-regularised logistic regression would mostly ignore.
            classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
            classifier.fit(features[train], labels[train])
            predicted = classifier.predict(features[test])
            records.append({"dataset": name, "split": split, "encoder": encoder,
                            "accuracy": round(accuracy_score(labels[test], predicted), 4),
                            "macro_f1": round(f1_score(labels[test], predicted, average="macro"), 4)})
            print(records[-1], flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
            "cpu_cores": os.cpu_count(),
            "vocabulary": len(vocab), "encode_seconds": encode_seconds}
    (args.out / "gene_encoders.json").write_text(json.dumps({"meta": meta, "neighbours": neighbours,
                                                            "genept_w": records}, indent=1) + "\n")
    write_report(args.out, args.encoders, neighbours, records, meta)


def write_report(out, encoders, neighbours, records, meta):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(dict.fromkeys((r["dataset"], r["split"]) for r in records))
    score = {(r["dataset"], r["split"], r["encoder"]): r for r in records}
    lines = [
        "# Gene text encoders compared",
        "",
        f"Made by `python benchmarks/gene_encoders.py` on {meta['date']} ({meta['machine']}, {meta.get('cpu_cores', '?')} cores). Gene table: "
        f"the built-in human descriptions of the {meta['vocabulary']} genes that the shared datasets measure, each "
        "encoder's vectors centred and re-normalised. `random`: Gaussian vectors; `shuffled`: wordllama vectors "
        "given to the wrong genes. Encoding time in this run (0 s where the table came from the cache): "
        + ", ".join(f"{e} {t:.0f} s" for e, t in meta["encode_seconds"].items()) + ".",
        "",
        "## GenePT-w: accuracy / macro-F1 on the shared splits",
        "",
        "Cell = expression-weighted mean of gene embeddings over all matched genes (L2-normalised), standardised, "
        "logistic regression (scikit-learn defaults, max_iter 3000) on the fixed training cells.",
        "",
        "| dataset | split | " + " | ".join(encoders) + " |",
        "|---|---|" + "---|" * len(encoders),
    ]
    for dataset, split in rows:
        cells = [f"{score[dataset, split, e]['accuracy']:.3f} / {score[dataset, split, e]['macro_f1']:.3f}"
                 for e in encoders]
        lines.append(f"| {dataset} | {split} | " + " | ".join(cells) + " |")
    means = {e: np.mean([score[d, s, e]["macro_f1"] for d, s in rows]) for e in encoders}
    lines.append("| **mean macro-F1** | | " + " | ".join(f"**{means[e]:.3f}**" for e in encoders) + " |")
    lines += ["", "![GenePT-w macro-F1 per split and encoder](gene_encoders.png)", "",
              "## Nearest neighbours of marker genes (cosine)", "",
              "| marker | " + " | ".join(encoders) + " |", "|---|" + "---|" * len(encoders)]
    for marker in MARKERS:
        lines.append(f"| {marker} | " + " | ".join(", ".join(neighbours[e][marker]) for e in encoders) + " |")
    (out / "gene_encoders.md").write_text("\n".join(lines) + "\n")

    fig, ax = plt.subplots(figsize=(12, 4.5))
    width = 0.8 / len(encoders)
    for i, encoder in enumerate(encoders):
        ax.bar(np.arange(len(rows)) + i * width, [score[d, s, encoder]["macro_f1"] for d, s in rows], width,
               label=encoder)
    ax.set_xticks(np.arange(len(rows)) + 0.4 - width / 2, [f"{d}\n{s}" for d, s in rows], rotation=35, ha="right",
                  fontsize=7)
    ax.set_ylabel("GenePT-w macro-F1")
    ax.set_ylim(0, 1)
    ax.legend(ncol=len(encoders))
    ax.set_title("Gene text encoders: GenePT-w macro-F1 on the shared test splits")
    fig.tight_layout()
    fig.savefig(out / "gene_encoders.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
