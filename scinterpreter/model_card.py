"""The model card (`README.md` with Hub metadata) that `train.py` writes into a saved model folder."""

from pathlib import Path

from .optional import require

# How the card names an Unassigned score whose name does not read as a confidence ("falls below").
UNASSIGNED_SCORE_WORDS = {"centroid_distance": "cosine similarity to the nearest cell-type centroid"}

CARD_TEMPLATE = """---
{metadata}---

# {title}

A [scInterpreter](https://arxiv.org/abs/2402.12405) cell-type annotator: a frozen **{backbone}** ({layers} decoder
layers) reads {k} genes of each cell as soft tokens (text embeddings of gene descriptions, weighted by expression,
through a trained projector) after the instruction "{instruction}", and a trained head classifies {head_reads}.
{selection} Only the {trained_parts} were trained ({trainable:,} parameters).

## Use

```python
from transformers import pipeline

annotate = pipeline("cell-annotation", model="{repo}", trust_remote_code=True)
result = annotate(adata)          # AnnData (raw counts or log-normalised), matrix + gene_names, or one cell
result.adata.obs["scinterpreter"]  # labels; obs["scinterpreter_score"], obsm["scinterpreter_probabilities"], ...
```

## Training data and split

- data: `{dataset}` (label column `{label_column}`), {n_train} training, {n_validation} validation and {n_test} test
  cells
- split: {split}
- gene names matched to the {species} vocabulary: {match}

## Evaluation (held-out test cells)

| metric | value |
|---|---|
{metric_rows}

{calibration}

Per cell type (F1 / support):

| cell type | F1 | test cells |
|---|---|---|
{class_rows}

## Labels

{labels}

## Intended use and limits

- For annotating single cells of the same tissue, species and assay as the training data. Labels outside the
  training set cannot be predicted; use `threshold=` to mark unsure cells `Unassigned`.
- Macro-averaged metrics on classes with few test cells move in large steps; read them with the per-class table.
- Gene text comes from NCBI-style descriptions built from Debian's org.Hs.eg.db and GO.db (Entrez Gene 2022), not
  the paper's GPT embeddings of NCBI summaries.
- Logistic regression on log-normalised expression is a strong baseline for this task; compare before relying on
  this model.
"""


# What the head classifies, per `config.cell_pooling`.
HEAD_READS = {
    "class_token": "the class token",
    "class_token_and_mean": "the class token's output beside the mean of the backbone's outputs at the cell's genes",
    "mean": "the mean of the soft tokens (the backbone is not run: an ablation)",
}


def write_model_card(folder, results: dict, model, repo_id: str | None = None) -> Path:
    """Writes `folder/README.md` from `train.py`'s results: Hub metadata header, data, metrics, labels, limits."""
    require("train", "write_model_card", "yaml")
    import yaml

    config = model.config
    test = results["test"]
    metadata = {
        "library_name": "transformers",
        "license": "mit",
        "pipeline_tag": "other",
        "tags": ["single-cell", "scRNA-seq", "cell-type-annotation", "scinterpreter", "biology", "custom_code"],
        "base_model": config.backbone_name_or_path if hasattr(config, "backbone_name_or_path") else None,
        "model-index": [{
            "name": Path(folder).name,
            "results": [{
                "task": {"type": "cell-annotation", "name": "Cell type annotation"},
                "dataset": {"type": Path(results["dataset"]).stem, "name": Path(results["dataset"]).stem},
                "metrics": [{"type": name, "value": value, "name": name} for name, value in test.items()],
            }],
        }],
    }
    metadata = {key: value for key, value in metadata.items() if value is not None}
    split = results.get("split_file") or f"stratified {1 - results.get('test_size', 0.2):.0%}/{results.get('test_size', 0.2):.0%}"
    if results.get("split_fold"):
        split += f", test batch {results['split_fold']}"
    if results.get("recipe", {}).get("gene_selection", "expression") == "excess":
        selection = ("The genes are each cell's most expressed above the reference profile of the training cells "
                     "(mean log-normalised expression per gene, saved with the processor), not simply its most "
                     "expressed, so genes every cell expresses do not crowd out its markers.")
    else:
        selection = "The genes are each cell's most expressed, as in the paper."
    trained = ["projector", "class token", "head"]
    if config.gene_offsets:
        trained.append("per-gene offsets")
    if getattr(config, "lora_rank", 0):
        trained.append(f"rank-{config.lora_rank} adapters of the backbone's attention")
    if getattr(config, "linear_gene_scores", False):
        fitted = model.config.n_scored_genes
        recipe = results.get("recipe", {})
        n_linear = recipe.get("n_linear_genes", 0)
        if n_linear and recipe.get("linear_gene_selection") == "variable":
            read = (f"the cell's values on a panel of about {n_linear:,} highly variable genes of the training cells "
                    "(class-balanced)" if recipe.get("linear_class_balance") else
                    f"the cell's values on a panel of about {n_linear:,} highly variable genes of the training cells")
        elif n_linear:
            read = f"each cell's first {n_linear:,} genes by the same ranking, and their values"
        else:
            read = "the same genes and values"
        selection += (f" The logits add a logistic regression on {read} (one weight per gene and cell type, for the "
                      f"{fitted:,} genes of the training cells), fitted on the training cells after the head: the gene "
                      "identities that the text embeddings blur.")
        head_temperature = (results.get("linear_gene_scores") or {}).get("head_temperature")
        if head_temperature:
            selection += (f" It is added to the head's logits divided by {head_temperature:g}, the temperature that "
                          "calibrates the head alone on the validation cells.")
        scale = (results.get("linear_gene_scores") or {}).get("scale", 1.0)
        if scale != 1.0:
            selection += f" Its scores count {scale:g} times as fitted."
    calibration = results.get("calibration") or {}
    calibration_text = ("Probabilities are calibrated: temperature {temperature} fitted on the validation cells; "
                        "expected calibration error (15 bins) on the test cells {test_ece_before:.3f} before, "
                        "{test_ece_after:.3f} after.".format(**calibration)) if "test_ece_after" in calibration else ""
    if "test_ece_floor" in calibration:
        calibration_text += (" A perfectly calibrated model would show about {test_ece_floor:.3f} on as many cells "
                             "(sampling noise).".format(**calibration))
    if calibration.get("test_unassigned_fraction") is not None:
        if calibration.get("centroid_similarity_threshold") is not None:
            below = ("its calibrated probability falls below {:.4g} or its cosine similarity to the nearest cell-type "
                     "centroid below {:.4g}").format(calibration["unassigned_threshold"],
                                                     calibration["centroid_similarity_threshold"])
        else:
            below = "its {} falls below {:.4g}".format(
                UNASSIGNED_SCORE_WORDS.get(calibration["unassigned_score"],
                                           calibration["unassigned_score"].replace("_", " ")),
                calibration["unassigned_threshold"])
        calibration_text += (
            " With `threshold=\"auto\"` the pipeline calls a cell `Unassigned` when {below} (fitted on the "
            "validation cells): {flagged:.1%} of the test cells, whose others are {kept:.1%} correct.".format(
                below=below, flagged=calibration["test_unassigned_fraction"],
                kept=calibration["test_accuracy_of_assigned"] or 0))
    card = CARD_TEMPLATE.format(
        calibration=calibration_text,
        selection=selection,
        head_reads=HEAD_READS.get(getattr(config, "cell_pooling", "class_token"), "the class token"),
        trained_parts=", ".join(trained[:-1]) + " and " + trained[-1],
        metadata=yaml.safe_dump(metadata, sort_keys=False),
        title=f"scInterpreter cell annotator: {Path(results['dataset']).stem}",
        backbone=getattr(config, "backbone_name_or_path", "Llama"),
        layers=config.text_config.num_hidden_layers,
        k=config.n_top_genes,
        instruction=config.instruction,
        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        repo=repo_id or str(folder),
        dataset=results["dataset"],
        label_column=results.get("label_column", "cell_type"),
        n_train=results["n_train_cells"],
        n_validation=results.get("n_validation_cells", 0),
        n_test=results["n_test_cells"],
        split=split,
        species=config.species,
        match=results.get("gene_match", "see training log"),
        metric_rows="\n".join(f"| {name} | {value:.4f} |" for name, value in test.items()),
        class_rows="\n".join(f"| {name} | {row['f1-score']:.3f} | {int(row['support'])} |"
                             for name, row in results["per_class"].items()),
        labels=", ".join(f"`{label}`" for label in config.id2label.values()),
    )
    path = Path(folder) / "README.md"
    path.write_text(card)
    return path
