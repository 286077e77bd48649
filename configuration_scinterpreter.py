"""scInterpreter model configuration, and the error every remote-code file raises for input it cannot use."""

from transformers import AutoConfig, LlamaConfig, PretrainedConfig

DEFAULT_INSTRUCTION = "What is the cell type of this given embedding?"
UNASSIGNED_SCORES = ("max_probability", "energy", "centroid_distance", "max_probability_and_centroid_distance")
# The scores that read the cell types' centroids, which calibration then stores in the model.
CENTROID_SCORES = ("centroid_distance", "max_probability_and_centroid_distance")
CELL_POOLINGS = ("class_token", "mean", "class_token_and_mean")


# Defined here, in the one module every remote-code file imports, so that modeling and loading need not import the
# processor for it; `processing_scinterpreter` re-exports it under the same name.
class ScInterpreterInputError(ValueError):
    """Input scInterpreter cannot use (data, options, model folders); the message says what is wrong and the fix."""


class ScInterpreterConfig(PretrainedConfig):
    r"""
    Configuration of a scInterpreter model: a frozen Llama decoder (`text_config`) reads an instruction,
    one soft token per top-expressed gene and a learnable class token; a head classifies the class token.

    The defaults below say what a saved `config.json` without the field means, so they never change: older folders
    load as they were trained. New models take every choice from `scinterpreter.recipe.Recipe` instead (`build_model`
    passes each one), which can differ: its `soft_token_rms` is `"auto"`.

    Args:
        text_config (`dict` or `LlamaConfig`, *optional*):
            Configuration of the frozen Llama-architecture backbone.
        gene_vocab_size (`int`, *optional*, defaults to 0):
            Number of genes in the frozen gene-embedding table (the processor's vocabulary).
        gene_embedding_dim (`int`, *optional*, defaults to 256):
            Width of a gene's text embedding.
        n_top_genes (`int`, *optional*, defaults to 64):
            Soft tokens per cell: the cell's most expressed genes.
        projector_hidden_size (`int`, *optional*):
            Hidden width of the gene -> backbone projector; defaults to the backbone's hidden size.
        head_hidden_size (`int`, *optional*, defaults to 256):
            Hidden width of the classification head.
        head_dropout (`float`, *optional*, defaults to 0.1):
            Dropout before the head's last layer.
        head_norm (`bool`, *optional*, defaults to `False`):
            Whether the head starts with a LayerNorm of the cell embedding.
        instruction (`str`, *optional*):
            The instruction text the backbone reads before the gene tokens.
        instruction_token_ids (`list[int]`, *optional*):
            `instruction` tokenised with the backbone's tokenizer, so that no tokenizer is needed at load time.
        species (`str`, *optional*, defaults to `"human"`):
            Species of the gene vocabulary.
        gene_text_encoder (`str`, *optional*):
            Name of the encoder that embedded the gene descriptions (`"wordllama"`, `"random"`, ...).
        gene_table_centered (`bool`, *optional*, defaults to `False`):
            Whether the gene-embedding table had its mean vector removed and rows re-normalised.
        gene_table_hash (`str`, *optional*):
            Content hash of the gene-embedding table (vocabulary, encoder, descriptions).
        label_smoothing (`float`, *optional*, defaults to 0.0):
            Label smoothing of the cross-entropy loss.
        class_weights (`list[float]`, *optional*):
            Per-label weights of the cross-entropy loss; none by default. New models are built without them
            (measured worse: docs/experiments.md, run H); kept so that older folders carrying them load and
            train as they did.
        soft_token_rms (`float`, *optional*):
            When set, each soft token is rescaled to this root-mean-square value (SmolLM2's token embeddings have
            about 0.14), so the backbone reads gene tokens at the scale of the text tokens it was trained on.
        gene_offsets (`bool`, *optional*, defaults to `False`):
            Whether a trainable per-gene vector is added to the frozen text embeddings (beyond the paper).
        gene_dropout (`float`, *optional*, defaults to 0.0):
            In training only, the share of each cell's genes left out of its soft tokens at random (each gene
            independently, one always kept), the rest moved up in order: an augmentation against the sampling
            noise of single-cell counts (beyond the paper). No effect in evaluation or inference.
        lora_rank (`int`, *optional*, defaults to 0):
            Rank of the trained low-rank adapters (LoRA) added to the frozen backbone's `lora_target_modules` in
            every layer (beyond the paper); 0 adds none.
        lora_alpha (`float`, *optional*, defaults to 16.0):
            LoRA scaling numerator: each adapter's update is multiplied by `lora_alpha / lora_rank`.
        lora_target_modules (`list[str]`, *optional*, defaults to `["q_proj", "v_proj"]`):
            The backbone's attention projections that get adapters.
        cell_pooling (`str`, *optional*, defaults to `"class_token"`):
            `"class_token"`: the cell embedding is the backbone's output at the class token (the paper).
            `"mean"`: the backbone is skipped and the cell embedding is the mean of the cell's soft tokens
            (the no-LLM ablation). `"class_token_and_mean"`: the class token's output beside the mean of the
            backbone's outputs at the cell's genes (twice the hidden size; beyond the paper).
        linear_gene_scores (`bool`, *optional*, defaults to `False`):
            Whether the logits add a linear read of the cell's chosen genes, `sum_g value_g * gene_score_weights[g]
            + gene_score_bias` (0 for a gene without a weight): a logistic regression on
            the same genes and values the soft tokens carry, fitted on the training cells after the head is trained
            (`scinterpreter.training.fit_linear_gene_scores`), so that the logits are those of a product of the two
            experts. Beyond the paper: the frozen text embeddings blur which gene a token is; this term keeps it.
            Only the genes with a weight are stored: `gene_score_genes` (their rows, sorted) and
            `gene_score_weights` (`n_scored_genes x num_labels`).
        n_scored_genes (`int`, *optional*, defaults to 0):
            How many genes the linear gene scores hold weights for (set when they are fitted).
        n_linear_input_genes (`int`, *optional*, defaults to 0):
            The length of the gene list the linear gene scores were fitted on (set when they are fitted): 0, the soft
            tokens' genes; else the processor's `linear_gene_*` list (`n_linear_genes`), which the model then requires.
        calibration_temperature (`float`, *optional*):
            Temperature fitted on validation cells after training (`scinterpreter.training.fit`); the pipeline turns
            logits into probabilities as `softmax(logits / calibration_temperature)`. None: no calibration (1).
        unassigned_threshold (`float`, *optional*):
            Fitted on the validation cells with the temperature: cells whose `unassigned_score` confidence falls
            below it are called `"Unassigned"` by the pipeline's `threshold="auto"` (about 5% of the validation
            cells fall below it). None: not fitted.
        unassigned_score (`str`, *optional*, defaults to `"max_probability"`):
            The confidence `unassigned_threshold` applies to: `"max_probability"` (the calibrated probability of
            the best type), `"energy"` (`T * logsumexp(logits / T)`, T the calibration temperature) or
            `"centroid_distance"` (the cosine similarity of the cell embedding to the nearest cell-type centroid,
            1 minus the distance: needs `cell_type_centroids`) or `"max_probability_and_centroid_distance"` (both: a
            cell is Unassigned when its calibrated probability falls below `unassigned_threshold` or its similarity
            below `centroid_similarity_threshold`, so that both uncertain cells and cells unlike every known type
            are flagged; its confidence is `min(probability, similarity + unassigned_threshold -
            centroid_similarity_threshold)`).
        centroid_similarity_threshold (`float`, *optional*):
            With `unassigned_score="max_probability_and_centroid_distance"`: the cosine similarity to the nearest
            cell-type centroid below which a cell is Unassigned (fitted on the validation cells together with
            `unassigned_threshold`, so that about 5% of them fall below either). None otherwise.
        cell_type_centroids (`bool`, *optional*, defaults to `False`):
            Whether the model holds its cell types' centroids (the buffer `cell_type_centroids`, `num_labels x
            hidden_size`: per type, the mean of its training cells' unit-length cell embeddings), which `fit` stores
            when it calibrates with an `unassigned_score` that reads them.
        adapter_only (`bool`, *optional*, defaults to `False`):
            Set by `save_pretrained(..., adapter_only=True)`: the folder holds only the trained weights, and
            `from_pretrained` loads the backbone from `backbone_name_or_path` and the gene table from
            scInterpreter's cache by `gene_table_hash`.
    """

    model_type = "scinterpreter"
    sub_configs = {"text_config": AutoConfig}

    def __init__(
        self,
        text_config=None,
        gene_vocab_size=0,
        gene_embedding_dim=256,
        n_top_genes=64,
        projector_hidden_size=None,
        head_hidden_size=256,
        head_dropout=0.1,
        head_norm=False,
        instruction=DEFAULT_INSTRUCTION,
        instruction_token_ids=None,
        species="human",
        gene_text_encoder=None,
        gene_table_centered=False,
        gene_table_hash=None,
        label_smoothing=0.0,
        class_weights=None,
        soft_token_rms=None,
        gene_offsets=False,
        gene_dropout=0.0,
        lora_rank=0,
        lora_alpha=16.0,
        lora_target_modules=("q_proj", "v_proj"),
        cell_pooling="class_token",
        linear_gene_scores=False,
        n_scored_genes=0,
        n_linear_input_genes=0,
        calibration_temperature=None,
        unassigned_threshold=None,
        unassigned_score="max_probability",
        centroid_similarity_threshold=None,
        cell_type_centroids=False,
        adapter_only=False,
        **kwargs,
    ):
        if isinstance(text_config, dict):
            text_config = dict(text_config)
            text_config.pop("quantization_config", None)
            text_config = LlamaConfig(**{k: v for k, v in text_config.items() if k != "model_type"})
        elif text_config is None:
            text_config = LlamaConfig(
                hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=128,
            )
        self.text_config = text_config
        self.gene_vocab_size = gene_vocab_size
        self.gene_embedding_dim = gene_embedding_dim
        self.n_top_genes = n_top_genes
        self.projector_hidden_size = projector_hidden_size or text_config.hidden_size
        self.head_hidden_size = head_hidden_size
        self.head_dropout = head_dropout
        self.head_norm = head_norm
        self.instruction = instruction
        self.instruction_token_ids = list(instruction_token_ids or [])
        self.species = species
        self.gene_text_encoder = gene_text_encoder
        self.gene_table_centered = gene_table_centered
        self.gene_table_hash = gene_table_hash
        self.label_smoothing = label_smoothing
        self.class_weights = list(class_weights) if class_weights is not None else None
        if cell_pooling not in CELL_POOLINGS:
            raise ScInterpreterInputError(f"cell_pooling must be one of {CELL_POOLINGS}, not {cell_pooling!r}.")
        self.soft_token_rms = soft_token_rms
        self.gene_offsets = gene_offsets
        if not 0.0 <= float(gene_dropout) < 1.0:
            raise ScInterpreterInputError(
                f"gene_dropout is a share of each cell's genes in [0, 1), not {gene_dropout!r}."
            )
        self.gene_dropout = float(gene_dropout)
        self.lora_rank = int(lora_rank)
        self.lora_alpha = float(lora_alpha)
        self.lora_target_modules = list(lora_target_modules)
        self.cell_pooling = cell_pooling
        self.linear_gene_scores = bool(linear_gene_scores)
        self.n_scored_genes = int(n_scored_genes)
        self.n_linear_input_genes = int(n_linear_input_genes)
        self.calibration_temperature = calibration_temperature
        if unassigned_score not in UNASSIGNED_SCORES:
            raise ScInterpreterInputError(
                f"unassigned_score must be one of {UNASSIGNED_SCORES}, not {unassigned_score!r}."
            )
        self.unassigned_threshold = unassigned_threshold
        self.unassigned_score = unassigned_score
        self.centroid_similarity_threshold = centroid_similarity_threshold
        self.cell_type_centroids = bool(cell_type_centroids)
        self.adapter_only = adapter_only
        super().__init__(**kwargs)


__all__ = ["ScInterpreterConfig", "ScInterpreterInputError", "DEFAULT_INSTRUCTION"]
