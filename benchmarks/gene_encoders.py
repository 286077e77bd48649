"""Compare gene text encoders: marker-gene neighbours and GenePT-w macro-F1 on the shared splits.

GenePT-w: each cell = expression-weighted mean of its genes' embeddings (log-normalised expression, every gene
the processor matches), L2-normalised, then logistic regression on the fixed training cells.

    python benchmarks/gene_encoders.py [--encoders wordllama minilm random shuffled] [--out docs/benchmarks]
    python benchmarks/gene_encoders.py --render [docs/benchmarks/gene_encoders.json]   # only the report

Writes gene_encoders.json, then gene_encoders.md and gene_encoders.png rendered from that JSON alone (`--render`
renders them again, beside the JSON, without encoding or fitting anything).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from splits import DATASETS, REPO, SHARED, load_split, score, splits  # noqa: E402

MARKERS = ["CD3E", "CD19", "MS4A1", "CD14", "NKG7", "PTPRC", "INS", "GCG", "KRT19", "PRSS1"]
MAX_ITER = 3000  # logistic regression's iterations
OUT = REPO / "docs" / "benchmarks"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoders", nargs="+", default=["wordllama", "minilm", "random", "shuffled"])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--render", nargs="?", const=OUT / "gene_encoders.json", type=Path, metavar="JSON",
                        help="only the report (markdown and figure), from a gene_encoders.json")
    args = parser.parse_args(argv)
    if args.render:
        write_report(json.loads(args.render.read_text()), args.render.parent)
        return
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from gene_matching_scinterpreter import GeneMatcher
    from processing_scinterpreter import ScInterpreterProcessor
    from scinterpreter.data import read_h5ad
    from scinterpreter.genes import build_gene_table, load_gene_descriptions, load_gene_id_maps
    from scinterpreter.plots import genept_w

    # The genes the benchmark data measure (matched as the processor matches them): embedding all the
    # descriptions with the slower encoders would take far longer and change none of the scores.
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
        adata, labels, train, test = load_split(name, split_file, fold)
        values, gene_ids = processor.normalize(adata)
        for encoder, table in tables.items():
            features = genept_w(values, gene_ids, table.embeddings)
            # Standardised features: unit-norm averages of thousands of genes differ by small amounts, which an
            # unscaled, L2-regularised logistic regression would mostly ignore.
            classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=MAX_ITER))
            classifier.fit(features[train], labels[train])
            records.append({"dataset": name, "split": split, "encoder": encoder,
                            **score(labels[test], classifier.predict(features[test]))})
            print(records[-1], flush=True)

    meta = {"date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
            "cpu_cores": os.cpu_count(), "vocabulary": len(vocab), "encode_seconds": encode_seconds,
            "max_iter": MAX_ITER,
            "command": " ".join(["python benchmarks/gene_encoders.py", *(argv if argv is not None else sys.argv[1:])])}
    report = {"meta": meta, "neighbours": neighbours, "genept_w": records}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gene_encoders.json").write_text(json.dumps(report, indent=1) + "\n")
    write_report(report, args.out)


def render(report: dict) -> str:
    """The markdown report of a gene_encoders.json, every figure taken from it (what it lacks is said so)."""
    meta, neighbours, records = report["meta"], report["neighbours"], report["genept_w"]
    encoders = list(dict.fromkeys(r["encoder"] for r in records))
    rows = list(dict.fromkeys((r["dataset"], r["split"]) for r in records))
    scores = {(r["dataset"], r["split"], r["encoder"]): r for r in records}
    cores = f"{meta['cpu_cores']} CPU cores" if "cpu_cores" in meta else "CPU cores not recorded"
    command = meta.get("command", "python benchmarks/gene_encoders.py")
    max_iter = f", max_iter {meta['max_iter']}" if "max_iter" in meta else ""
    markers = list(next(iter(neighbours.values())))
    n_neighbours = len(neighbours[encoders[0]][markers[0]])
    lines = [
        "# Gene text encoders compared",
        "",
        f"Made by `{command}` on {meta['date']} ({meta['machine']}, {cores}). Gene table: "
        f"the built-in human descriptions of the {meta['vocabulary']:,} genes that the shared datasets measure, each "
        "encoder's vectors centred and re-normalised. `random`: Gaussian vectors; `shuffled`: wordllama vectors "
        "given to the wrong genes. Encoding time in this run (0 s where the table came from the cache): "
        + ", ".join(f"{e} {t:.0f} s" for e, t in meta["encode_seconds"].items()) + ".",
        "",
        "## GenePT-w: accuracy / macro-F1 on the shared splits",
        "",
        "Cell = expression-weighted mean of gene embeddings over all matched genes (L2-normalised), standardised, "
        f"logistic regression (scikit-learn defaults{max_iter}) on the fixed training cells.",
        "",
        "| dataset | split | " + " | ".join(encoders) + " |",
        "|---|---|" + "---|" * len(encoders),
    ]
    for dataset, split in rows:
        cells = [f"{scores[dataset, split, e]['accuracy']:.3f} / {scores[dataset, split, e]['macro_f1']:.3f}"
                 for e in encoders]
        lines.append(f"| {dataset} | {split} | " + " | ".join(cells) + " |")
    means = {e: np.mean([scores[d, s, e]["macro_f1"] for d, s in rows]) for e in encoders}
    lines.append("| **mean macro-F1** | | " + " | ".join(f"**{means[e]:.3f}**" for e in encoders) + " |")
    lines += ["", "![GenePT-w macro-F1 per split and encoder](gene_encoders.png)", "",
              f"## Nearest {n_neighbours} neighbours of marker genes (cosine)", "",
              "| marker | " + " | ".join(encoders) + " |", "|---|" + "---|" * len(encoders)]
    for marker in markers:
        lines.append(f"| {marker} | " + " | ".join(", ".join(neighbours[e][marker]) for e in encoders) + " |")
    return "\n".join(lines) + "\n"


def write_report(report: dict, out: Path):
    """gene_encoders.md and gene_encoders.png in `out`, from the report's JSON."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out / "gene_encoders.md").write_text(render(report))
    records = report["genept_w"]
    encoders = list(dict.fromkeys(r["encoder"] for r in records))
    rows = list(dict.fromkeys((r["dataset"], r["split"]) for r in records))
    scores = {(r["dataset"], r["split"], r["encoder"]): r["macro_f1"] for r in records}
    fig, ax = plt.subplots(figsize=(12, 4.5))
    width = 0.8 / len(encoders)
    for i, encoder in enumerate(encoders):
        ax.bar(np.arange(len(rows)) + i * width, [scores[d, s, encoder] for d, s in rows], width, label=encoder)
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
