"""Probe: how much cell identity survives the processor's top-k gene selection, without the LLM.

Features = expression-weighted sum of the selected genes' embeddings (GenePT-w restricted to the top k),
classifier = logistic regression, on a fixed split of ../shared/data/scrna. Prints accuracy / macro-F1 per setting.

    python benchmarks/gene_selection_probe.py [dataset_name] [--only_exclusion]
"""

import json
import sys
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from processing_scinterpreter import ScInterpreterProcessor  # noqa: E402
from scinterpreter.data import read_h5ad  # noqa: E402
from scinterpreter.genes import build_gene_table  # noqa: E402

SHARED = REPO.parent / "shared" / "data" / "scrna"


def main(name="baron_human_pancreas", only_exclusion=False):
    adata = read_h5ad(SHARED / f"{name}.h5ad")
    split = json.loads((SHARED / "splits" / f"{name}.json").read_text())
    position = {cell: i for i, cell in enumerate(adata.obs_names)}
    train = np.array([position[c] for c in split["train"]])
    test = np.array([position[c] for c in split["test"]])
    labels = adata.obs[split["label_key"]].astype(str).to_numpy()
    table = build_gene_table()

    def score(processor, tag):
        encoded = processor(adata, return_tensors="np")
        weights = encoded["gene_values"] * encoded["gene_mask"]
        features = (table.embeddings[encoded["gene_ids"]] * weights[..., None]).sum(1)
        classifier = LogisticRegression(max_iter=2000).fit(features[train], labels[train])
        predicted = classifier.predict(features[test])
        print(f"{tag}: {accuracy_score(labels[test], predicted):.3f} / "
              f"{f1_score(labels[test], predicted, average='macro'):.3f}", flush=True)

    for k in (32, 64, 128):
        score(ScInterpreterProcessor(gene_vocab=table.vocab, n_top_genes=k), f"top {k} by expression")
    processor = ScInterpreterProcessor(gene_vocab=table.vocab, n_top_genes=64, exclude_genes="ribosomal_mitochondrial")
    score(processor, "top 64 by expression, no ribosomal / mitochondrial genes")
    if only_exclusion:
        return

    # Per-gene statistics of the training cells, for the standardised rankings.
    matrix = adata.X[train].toarray()
    lognorm = np.log1p(matrix / matrix.sum(1, keepdims=True) * 1e4)
    matched = ScInterpreterProcessor(gene_vocab=table.vocab)._match(adata.var_names)
    mean = np.zeros(len(table.vocab), np.float32)
    std = np.ones(len(table.vocab), np.float32)
    mean[matched.vocab_ids] = lognorm[:, matched.columns].mean(0)
    std[matched.vocab_ids] = lognorm[:, matched.columns].std(0)
    for floor in (0.5, 1.0):
        processor = ScInterpreterProcessor(gene_vocab=table.vocab, n_top_genes=64, gene_ranking="standardized",
                                           gene_mean=mean, gene_std=np.maximum(std, floor))
        score(processor, f"top 64 by standardised expression, std floor {floor}")
    processor = ScInterpreterProcessor(gene_vocab=table.vocab, n_top_genes=64, gene_ranking="standardized",
                                       gene_mean=mean, gene_std=np.ones_like(std))
    score(processor, "top 64 by expression minus the training mean")


if __name__ == "__main__":
    arguments = [a for a in sys.argv[1:] if a != "--only_exclusion"]
    main(*arguments, only_exclusion="--only_exclusion" in sys.argv)
