"""`Recipe`, the one place where the choices a new scInterpreter model is built and trained with are written.

`ScInterpreterConfig` and `ScInterpreterProcessor` keep defaults of their own, on purpose: those are remote code
(they cannot import this package), and their defaults say what a saved folder without a field means, so they must
never change with the recipe or old folders would load differently. `build_model` therefore passes every recipe
choice to both explicitly (`CONFIG_FIELDS`, `PROCESSOR_FIELDS`); a new model never relies on their defaults.
Where the two still differ (`soft_token_rms`, `gene_selection`, `gene_dropout`, `n_top_genes`, `cell_pooling`,
`linear_gene_scores`, `n_linear_genes`, `linear_gene_selection`), the folder default is the older behaviour.
"""

from dataclasses import dataclass, field

from .backbone import DEFAULT_BACKBONE

# Recipe fields that `build_model` writes, under the same name, into the model's config and into the processor.
# (`soft_token_rms` reaches the config resolved to a number; `unassigned_score` when `fit` calibrates.)
CONFIG_FIELDS = ("n_top_genes", "head_hidden_size", "head_norm", "label_smoothing", "gene_offsets", "gene_dropout",
                 "lora_rank", "lora_alpha", "cell_pooling", "linear_gene_scores")
PROCESSOR_FIELDS = ("n_top_genes", "n_linear_genes", "linear_gene_selection", "gene_selection", "token_value",
                    "exclude_genes")


@dataclass
class Recipe:
    """
    What scInterpreter builds and trains, beyond `TrainingArguments`: the defaults measured in docs/experiments.md.
    `build_model`, `fit`, `train.py`'s flags and the benchmarks all start from `Recipe()`.
    """

    backbone: str = field(default=DEFAULT_BACKBONE, metadata={"help": "Llama-architecture checkpoint: Hub id or path."})
    num_backbone_layers: int | None = field(
        default=6, metadata={"help": "Keep the first N decoder layers (0 or less: all of them)."}
    )
    backbone_dtype: str = field(
        default="auto",
        metadata={"help": "dtype of the frozen backbone: auto (bfloat16 where the device runs it natively, else "
                          "float32), float32 or bfloat16. $SCINTERPRETER_BACKBONE_DTYPE overrides auto."},
    )
    n_top_genes: int = field(
        default=32,
        metadata={"help": "Gene soft tokens per cell (32 over 64: fewer tokens for the class token to read, half the "
                          "time; docs/experiments.md, session 12)."},
    )
    gene_selection: str = field(
        default="excess",
        metadata={"help": "How each cell's genes are chosen: excess (expression minus the gene's mean over the "
                          "training cells, a reference the processor fits) or expression (the paper's rule)."},
    )
    token_value: str = field(
        default="expression",
        metadata={"help": "What weighs each gene's soft token: expression (log-normalised) or excess."},
    )
    exclude_genes: str | None = field(
        default=None,
        metadata={"help": "Genes never chosen as a cell's top genes: ribosomal_mitochondrial (RPS/RPL/MT- genes) or "
                          "a regular expression on gene symbols. They still count in the library size."},
    )
    gene_encoder: str = field(default="wordllama", metadata={"help": "Gene text encoder: wordllama or random."})
    gene_descriptions: str | None = field(default=None, metadata={"help": "Your own symbol/description TSV."})
    center_gene_table: bool = field(default=True, metadata={"help": "Remove the mean gene vector (recommended)."})
    head_hidden_size: int = field(default=256, metadata={"help": "Hidden width of the classification head."})
    head_norm: bool = field(default=False, metadata={"help": "LayerNorm the cell embedding before the head."})
    soft_token_rms: str = field(
        default="auto",
        metadata={"help": "Root-mean-square of each gene soft token: auto (that of the backbone's token embeddings, "
                          "about 0.14 for SmolLM2), a number, or none (the projector's own scale, as in the paper)."},
    )
    gene_offsets: bool = field(
        default=False,
        metadata={"help": "Also train a per-gene vector added to the frozen text embeddings (beyond the paper)."},
    )
    gene_dropout: float = field(
        default=0.25,
        metadata={"help": "In training only, the share of each cell's genes left out of its soft tokens at random "
                          "(an augmentation beyond the paper; 0.25 over 0: +.026 mean macro-F1 over 10 splits x 3 "
                          "seeds, docs/experiments.md; 0 turns it off)."},
    )
    lora_rank: int = field(
        default=0, metadata={"help": "Rank of low-rank adapters on the backbone's q and v projections (0: none)."}
    )
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scaling numerator (update x alpha / rank)."})
    cell_pooling: str = field(
        default="class_token_and_mean",
        metadata={"help": "What the head reads: class_token_and_mean (the class token's output beside the mean of the "
                          "backbone's outputs at the cell's genes; beyond the paper, docs/experiments.md, session 12), "
                          "class_token (the paper), or mean (skip the LLM and average the soft tokens: the ablation)."},
    )
    linear_gene_scores: bool = field(
        default=True,
        metadata={"help": "Add to the head's logits a logistic regression on the cell's chosen genes and their values, "
                          "fitted on the training cells after the head (beyond the paper: the gene identities that "
                          "the frozen text embeddings blur; docs/experiments.md, session 14); false: the head alone."},
    )
    n_linear_genes: int = field(
        default=2000,
        metadata={"help": "Genes the linear gene scores read: the panel's size (linear_gene_selection variable; 2000, "
                          "as logistic-regression references on highly variable genes), or each cell's first "
                          "n_linear_genes genes by the soft tokens' ranking (top; docs/experiments.md, session 15); "
                          "0: the soft tokens' genes."},
    )
    linear_gene_selection: str = field(
        default="variable",
        metadata={"help": "What the linear gene scores read: variable (every cell's values on one panel of "
                          "n_linear_genes highly variable genes of the training cells, which processor.fit picks; "
                          "docs/experiments.md, session 16) or top (each cell's first n_linear_genes genes by the soft "
                          "tokens' ranking, the session-15 default)."},
    )
    linear_class_balance: float = field(
        default=1.0,
        metadata={"help": "Class weights of the linear gene scores' fit: each cell's loss weighed by (cells of its "
                          "type)^-power, scaled as scikit-learn's class_weight='balanced' at 1 (the default since "
                          "session 16); 0: unweighted."},
    )
    linear_gene_scale: float = field(
        default=2.0,
        metadata={"help": "Factor on the fitted linear gene scores before they are added to the head's logits "
                          "(divided by its temperature): 2 (since session 16) gives the regression more say than the "
                          "head; 1 adds them as fitted (docs/experiments.md, session 16)."},
    )
    head_temperature: bool = field(
        default=True,
        metadata={"help": "Before the linear gene scores are fitted, divide the head's logits by the temperature that "
                          "calibrates them on the validation cells, so that the two parts are added as calibrated "
                          "experts (docs/experiments.md, session 15)."},
    )
    label_smoothing: float = field(default=0.0, metadata={"help": "Label smoothing of the loss."})
    class_balance: float = field(
        default=0.5,
        metadata={"help": "Class-balanced sampling: each cell is drawn with weight (cells of its type)^-power; 0 "
                          "keeps the data's frequencies, 0.5 draws rare types more often, 1 draws every type equally."},
    )
    validation_fraction: float = field(
        default=0.1,
        metadata={"help": "Share of each cell type's training cells held out to evaluate every epoch (types with "
                          "fewer than 1/fraction cells give none); 0 holds none out."},
    )
    keep_best_epoch: bool = field(
        default=False,
        metadata={"help": "End with the epoch of best validation `best_epoch_metric` instead of the last one (on the "
                          "shared splits the last epoch was better: docs/experiments.md)."},
    )
    best_epoch_metric: str = field(
        default="macro_f1", metadata={"help": "Validation metric that picks the epoch: macro_f1, accuracy or loss."}
    )
    calibrate: bool = field(
        default=True,
        metadata={"help": "Fit a temperature on the validation cells after training, so that the pipeline's "
                          "probabilities mean what they say (stored as config.calibration_temperature), and the "
                          "confidence under which a cell is called Unassigned (config.unassigned_threshold)."},
    )
    unassigned_score: str = field(
        default="max_probability_and_centroid_distance",
        metadata={"help": "Confidence that the Unassigned threshold applies to: max_probability (calibrated), "
                          "energy, centroid_distance (cosine similarity to the nearest cell type's centroid, which "
                          "calibration then stores in the model) or max_probability_and_centroid_distance (a cell is "
                          "Unassigned when either falls below its own threshold: uncertain cells and cells unlike "
                          "every known type; docs/benchmarks/unknown_types.md)."},
    )
