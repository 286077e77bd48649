"""PyTorch scInterpreter: a frozen Llama decoder reads gene soft tokens and annotates the cell."""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache, LlamaModel, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

try:
    from .configuration_scinterpreter import CENTROID_SCORES, ScInterpreterConfig, ScInterpreterInputError
    from .loading_scinterpreter import adapter_state_dict, backbone_fingerprint, load_pretrained, select_backbone_dtype
except ImportError:  # imported as a top-level module (installed package, tests) rather than as Hub remote code
    from configuration_scinterpreter import CENTROID_SCORES, ScInterpreterConfig, ScInterpreterInputError
    from loading_scinterpreter import adapter_state_dict, backbone_fingerprint, load_pretrained, select_backbone_dtype

TRAINABLE_MODULES = ("projector", "class_token", "head", "gene_offsets", "lora_A", "lora_B")


@dataclass
class ScInterpreterModelOutput(ModelOutput):
    r"""
    cell_embeddings (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
        The backbone's last hidden state at the class token, in float32 (with `cell_pooling="class_token_and_mean"`,
        followed by the mean of its last hidden states at the cell's genes: `2 * hidden_size`).
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, n_top_genes + 1, hidden_size)`):
        The backbone's last hidden states at the gene soft tokens and the class token.
    hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`):
        The backbone's hidden states after the embeddings and after each layer.
    """

    cell_embeddings: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class CellAnnotationOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `(1,)`, *optional*, returned when `labels` is given):
        Cross-entropy loss.
    logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
        Classification scores (before softmax).
    cell_embeddings (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
        The backbone's last hidden state at the class token.
    hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`):
        The backbone's hidden states after the embeddings and after each layer.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cell_embeddings: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


def cell_embedding_size(config: ScInterpreterConfig) -> int:
    """Width of the cell embedding that the head reads: `"class_token_and_mean"` puts two hidden states side by side."""
    return config.text_config.hidden_size * (2 if config.cell_pooling == "class_token_and_mean" else 1)


def masked_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean of `values` (batch, positions, hidden) over the positions where `weights` (batch, positions) is 1."""
    weights = weights.unsqueeze(-1)
    return (values * weights).sum(1) / weights.sum(1).clamp(min=1)


class ScInterpreterProjector(nn.Module):
    """Maps expression-weighted gene text embeddings into the backbone's token-embedding space."""

    def __init__(self, config: ScInterpreterConfig):
        super().__init__()
        self.linear_1 = nn.Linear(config.gene_embedding_dim, config.projector_hidden_size)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(config.projector_hidden_size, config.text_config.hidden_size)

    def forward(self, weighted_gene_embeddings: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(weighted_gene_embeddings)))


class ScInterpreterLoraLinear(nn.Linear):
    """
    A frozen linear layer of the backbone plus a trained low-rank update (LoRA): `W x + (alpha / r) B A x`. `B`
    starts at zero, so training starts from the frozen model. The frozen `weight` keeps its name, so backbone
    checkpoints load as they are; the adapters stay in float32 whatever dtype the backbone runs in.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, rank: int, alpha: float):
        super().__init__(in_features, out_features, bias=bias)
        self.lora_A = nn.Parameter(torch.zeros(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        self.lora_scaling = alpha / rank

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        output = super().forward(hidden_states)
        update = hidden_states.to(self.lora_A.dtype) @ self.lora_A.T @ self.lora_B.T
        return output + (self.lora_scaling * update).to(output.dtype)


class ScInterpreterClassificationHead(nn.Module):
    """
    MLP from the class token's hidden state to label scores. A LayerNorm comes first when `config.head_norm`:
    LLM hidden states carry a few dimensions with large constant offsets, which slow the head's training.
    """

    def __init__(self, config: ScInterpreterConfig):
        super().__init__()
        embedding_size = cell_embedding_size(config)
        self.norm = nn.LayerNorm(embedding_size) if config.head_norm else nn.Identity()
        self.dense = nn.Linear(embedding_size, config.head_hidden_size)
        self.act = nn.GELU()
        self.dropout = nn.Dropout(config.head_dropout)
        self.out_proj = nn.Linear(config.head_hidden_size, config.num_labels)

    def forward(self, cell_embeddings: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.dropout(self.act(self.dense(self.norm(cell_embeddings)))))


class ScInterpreterPreTrainedModel(PreTrainedModel):
    config_class = ScInterpreterConfig
    base_model_prefix = "model"
    input_modalities = ("gene_expression",)
    main_input_name = "gene_ids"
    _no_split_modules = ["LlamaDecoderLayer"]
    _supports_sdpa = True
    _supports_attention_backend = True
    # The trained parts stay in float32 whatever dtype the frozen backbone runs in.
    _keep_in_fp32_modules_strict = ["projector", "class_token", "head", "gene_embeddings", "gene_offsets", "lora_A",
                                    "lora_B", "cell_type_centroids", "gene_score_genes", "gene_score_weights", "gene_score_bias"]

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, ScInterpreterModel):
            std = module.config.text_config.initializer_range
            init.normal_(module.class_token, mean=0.0, std=std)
            if module.gene_offsets is not None:
                # Training starts from the paper's frozen text embeddings.
                init.zeros_(module.gene_offsets.weight)
        if isinstance(module, ScInterpreterLoraLinear):
            init.normal_(module.lora_A, mean=0.0, std=module.in_features**-0.5)
            init.zeros_(module.lora_B)

    def freeze_backbone(self):
        """Freezes everything but the projector, the class token and the head."""
        for name, parameter in self.named_parameters():
            parameter.requires_grad_(any(part in name.split(".") for part in TRAINABLE_MODULES))
        return self

    def set_backbone_dtype(self, dtype: torch.dtype):
        """Casts the frozen backbone (only) to `dtype`; the trained parts and the gene table stay in float32."""
        self.base_model.language_model.to(dtype)
        for module in self.base_model.language_model.modules():
            if isinstance(module, ScInterpreterLoraLinear):
                module.lora_A.data, module.lora_B.data = module.lora_A.data.float(), module.lora_B.data.float()
        return self

    def save_pretrained(self, save_directory, *args, adapter_only: bool = False, **kwargs):
        """
        `PreTrainedModel.save_pretrained`; with `adapter_only=True` it writes only the trained weights (projector,
        class token, head, and gene offsets where trained: a few MB) and the config keeps where the frozen parts
        come from (`backbone_name_or_path`, `gene_table_hash`), which `from_pretrained` loads again.
        """
        if adapter_only:
            kwargs["state_dict"] = adapter_state_dict(self)
        self.config.adapter_only = adapter_only
        self.config.backbone_dtype = str(self.base_model.backbone_dtype).replace("torch.", "")
        return super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """
        `PreTrainedModel.from_pretrained`, from safetensors only; an adapter-only folder gets its backbone and gene
        table from where its config says (`loading_scinterpreter.load_pretrained`).
        """
        model = load_pretrained(super().from_pretrained, pretrained_model_name_or_path, *args, **kwargs)
        # Loading re-creates the parameters and forgets `requires_grad`, so freeze again.
        return model.freeze_backbone()


class ScInterpreterModel(ScInterpreterPreTrainedModel):
    """
    The scInterpreter base model: gene soft tokens and a class token read by a frozen Llama decoder after an
    instruction. Returns the class token's last hidden state as the cell embedding.
    """

    def __init__(self, config: ScInterpreterConfig):
        super().__init__(config)
        # Persistent so that `from_pretrained` fills it from the checkpoint (non-persistent buffers come back empty).
        self.register_buffer("gene_embeddings", torch.zeros(config.gene_vocab_size, config.gene_embedding_dim))
        self.projector = ScInterpreterProjector(config)
        self.class_token = nn.Parameter(torch.zeros(config.text_config.hidden_size))
        self.gene_offsets = (
            nn.Embedding(config.gene_vocab_size, config.gene_embedding_dim) if config.gene_offsets else None
        )
        self.language_model = LlamaModel(config.text_config)
        if config.lora_rank > 0:
            self._add_lora_adapters()
        self._instruction_cache = None
        self.post_init()
        self.freeze_backbone()

    def _add_lora_adapters(self):
        config = self.config
        for layer in self.language_model.layers:
            for name in config.lora_target_modules:
                frozen = getattr(layer.self_attn, name)
                setattr(layer.self_attn, name, ScInterpreterLoraLinear(
                    frozen.in_features, frozen.out_features, frozen.bias is not None, config.lora_rank,
                    config.lora_alpha,
                ))

    def load_backbone_weights(self, state_dict: dict):
        """Loads a `LlamaModel` state dict into the frozen backbone (its LoRA adapters, if any, are kept)."""
        result = self.language_model.load_state_dict(state_dict, strict=False)
        missing = [key for key in result.missing_keys if ".lora_" not in key]
        if missing or result.unexpected_keys:
            raise ScInterpreterInputError(
                f"the backbone weights do not fit the model's backbone (missing {missing[:3]}, unexpected "
                f"{result.unexpected_keys[:3]}): was the model configured for another backbone or depth?"
            )

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    @property
    def backbone_dtype(self) -> torch.dtype:
        return self.language_model.embed_tokens.weight.dtype

    def get_gene_features(self, gene_ids: torch.LongTensor, gene_values: torch.Tensor) -> torch.Tensor:
        """
        Soft tokens of the given genes: `projector(gene_embeddings[gene_ids] * gene_values)`.

        Args:
            gene_ids (`torch.LongTensor` of shape `(batch_size, n_top_genes)`): rows of the gene table.
            gene_values (`torch.FloatTensor` of shape `(batch_size, n_top_genes)`): normalised expression.

        Returns:
            `torch.FloatTensor` of shape `(batch_size, n_top_genes, hidden_size)`, in float32.
        """
        gene_embeddings = self.gene_embeddings[gene_ids]
        if self.gene_offsets is not None:
            gene_embeddings = gene_embeddings + self.gene_offsets(gene_ids)
        weighted = gene_embeddings * gene_values.unsqueeze(-1).to(gene_embeddings.dtype)
        soft_tokens = self.projector(weighted.to(self.projector.linear_1.weight.dtype))
        if self.config.soft_token_rms is not None:
            rms = soft_tokens.pow(2).mean(-1, keepdim=True).add(1e-12).sqrt()
            soft_tokens = soft_tokens * (self.config.soft_token_rms / rms)
        return soft_tokens

    def drop_genes(self, gene_ids, gene_values, gene_mask):
        """Leaves out each real gene with probability `config.gene_dropout` (each cell keeps its first gene) and
        moves the kept genes up, in their order, so that real genes still come first."""
        real = gene_mask.bool()
        keep = real & (torch.rand(gene_ids.shape, device=gene_ids.device) >= self.config.gene_dropout)
        keep[:, 0] |= real[:, 0]
        order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices
        return gene_ids.gather(1, order), gene_values.gather(1, order), keep.gather(1, order).to(gene_mask.dtype)

    def get_instruction_cache(self, batch_size: int):
        """
        Keys and values of the instruction, computed once and shared by every cell: the backbone is frozen and
        the instruction comes first, so they do not depend on the cell.
        """
        if not self.config.instruction_token_ids:
            return None
        weight = self.language_model.embed_tokens.weight
        if self._instruction_cache is None or self._instruction_cache[0] != (weight.device, weight.dtype):
            input_ids = torch.tensor([self.config.instruction_token_ids], device=weight.device)
            with torch.no_grad():
                outputs = self.language_model(input_ids=input_ids, use_cache=True)
            layers = [(layer.keys, layer.values) for layer in outputs.cache.layers]
            self._instruction_cache = ((weight.device, weight.dtype), layers)
        layers = self._instruction_cache[1]
        return DynamicCache(
            ddp_cache_data=[(k.expand(batch_size, -1, -1, -1), v.expand(batch_size, -1, -1, -1)) for k, v in layers]
        )

    def _apply(self, fn, *args, **kwargs):
        # Moving or casting the model invalidates the cached instruction keys/values.
        self._instruction_cache = None
        return super()._apply(fn, *args, **kwargs)

    @property
    def is_backbone_compiled(self) -> bool:
        return getattr(self.language_model, "_compiled_call_impl", None) is not None

    def compile_backbone(self, enable: bool = True):
        """
        Runs the frozen backbone under `torch.compile` (Inductor, static shapes) with plain attention math, which
        Inductor fuses with the norms, activations and rotary embeddings around the matmuls: on CPU inference is
        about 15% faster (benchmarks/speed.py) after ~15 s of compiling for each new batch shape. Weights, their
        names and the outputs stay as they are. `enable=False` undoes it.
        """
        backbone = self.language_model
        if enable and not self.is_backbone_compiled:
            # SDPA's CPU kernel is slow at these short sequences; eager attention is matmuls Inductor can fuse.
            self._attn_implementation_uncompiled = backbone.config._attn_implementation
            backbone.set_attn_implementation("eager")
            backbone.compile(dynamic=False)
        elif not enable and self.is_backbone_compiled:
            backbone._compiled_call_impl = None
            backbone.set_attn_implementation(getattr(self, "_attn_implementation_uncompiled", None) or "sdpa")
        return self

    def pool_cell_embeddings(self, last_hidden_state: torch.Tensor, n_real: torch.LongTensor) -> torch.FloatTensor:
        """
        The cell embedding the head reads (`config.cell_pooling`), in float32, from the backbone's last hidden states
        at each cell's genes and class token: `last_hidden_state` of shape `(batch_size, positions, hidden_size)`
        holds a cell's `n_real` genes first, then its class token at position `n_real`.
        """
        batch = torch.arange(last_hidden_state.shape[0], device=last_hidden_state.device)
        cell_embeddings = last_hidden_state[batch, n_real].float()
        if self.config.cell_pooling == "class_token_and_mean":
            positions = torch.arange(last_hidden_state.shape[1], device=last_hidden_state.device)
            gene_mean = masked_mean(last_hidden_state.float(), (positions[None, :] < n_real[:, None]).to(torch.float32))
            cell_embeddings = torch.cat([cell_embeddings, gene_mean], dim=-1)
        return cell_embeddings

    def forward(
        self,
        gene_ids: torch.LongTensor,
        gene_values: torch.FloatTensor,
        gene_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> ScInterpreterModelOutput:
        r"""
        gene_ids (`torch.LongTensor` of shape `(batch_size, n_top_genes)`):
            Gene-table rows of each cell's top genes, most expressed first (from `ScInterpreterProcessor`).
        gene_values (`torch.FloatTensor` of shape `(batch_size, n_top_genes)`):
            Their normalised expression.
        gene_mask (`torch.Tensor` of shape `(batch_size, n_top_genes)`, *optional*):
            1 for real genes, 0 for padding. Real genes come first in each row.
        """
        batch_size, n_genes = gene_ids.shape
        if gene_mask is None:
            gene_mask = torch.ones_like(gene_ids)
        if self.training and self.config.gene_dropout > 0:
            gene_ids, gene_values, gene_mask = self.drop_genes(gene_ids, gene_values, gene_mask)
        n_real = gene_mask.to(torch.long).sum(-1)

        soft_tokens = self.get_gene_features(gene_ids, gene_values)
        if self.config.cell_pooling == "mean":
            cell_embeddings = masked_mean(soft_tokens, gene_mask.to(soft_tokens.dtype))
            return ScInterpreterModelOutput(cell_embeddings=cell_embeddings, last_hidden_state=soft_tokens)
        # The class token goes right after each cell's last real gene. Padding then only follows it and, with
        # causal attention, never reaches it: no attention mask is needed and batches of any padding agree.
        positions = torch.arange(n_genes + 1, device=gene_ids.device)
        class_slot = positions[None, :] == n_real[:, None]
        gene_slot = torch.minimum(positions[None, :] - (positions[None, :] > n_real[:, None]).long(),
                                  torch.tensor(n_genes - 1, device=gene_ids.device))
        inputs_embeds = torch.gather(soft_tokens, 1, gene_slot[..., None].expand(-1, -1, soft_tokens.shape[-1]))
        inputs_embeds = torch.where(class_slot[..., None], self.class_token.to(inputs_embeds.dtype), inputs_embeds)

        instruction_cache = self.get_instruction_cache(batch_size)
        n_prefix = len(self.config.instruction_token_ids)
        outputs = self.language_model(
            inputs_embeds=inputs_embeds.to(self.backbone_dtype),
            cache=instruction_cache,
            position_ids=(positions + n_prefix)[None].expand(batch_size, -1),
            use_cache=False,
            output_hidden_states=output_hidden_states,
        )
        last_hidden_state = outputs.last_hidden_state
        return ScInterpreterModelOutput(
            cell_embeddings=self.pool_cell_embeddings(last_hidden_state, n_real),
            last_hidden_state=last_hidden_state,
            hidden_states=outputs.hidden_states,
        )


class ScInterpreterForCellAnnotation(ScInterpreterPreTrainedModel):
    """scInterpreter with a classification head on the cell embedding: predicts one label per cell."""

    def __init__(self, config: ScInterpreterConfig):
        super().__init__(config)
        self.model = ScInterpreterModel(config)
        self.head = ScInterpreterClassificationHead(config)
        # Per cell type, the mean unit-length cell embedding of its training cells (`set_cell_type_centroids`), for
        # the `centroid_distance` score. Only a model configured with them has the tensor in its weights; the others
        # (older folders included) hold None here, so their weights load as they were saved.
        centroids = (torch.zeros(config.num_labels, cell_embedding_size(config)) if config.cell_type_centroids
                     else None)
        self.register_buffer("cell_type_centroids", centroids)
        # The linear read of the chosen genes (`config.linear_gene_scores`), fitted after training
        # (`set_linear_gene_scores`); zero until then, so that it does not change the logits the head is trained on.
        # Only the genes with a weight are stored (a few thousand of the table's tens of thousands), sorted.
        linear = config.linear_gene_scores
        self.register_buffer("gene_score_genes",
                             torch.zeros(config.n_scored_genes, dtype=torch.long) if linear else None)
        self.register_buffer("gene_score_weights",
                             torch.zeros(config.n_scored_genes, config.num_labels) if linear else None)
        self.register_buffer("gene_score_bias", torch.zeros(config.num_labels) if linear else None)
        self.post_init()
        self.freeze_backbone()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def forward(
        self,
        gene_ids: torch.LongTensor,
        gene_values: torch.FloatTensor,
        gene_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        linear_gene_ids: torch.LongTensor | None = None,
        linear_gene_values: torch.FloatTensor | None = None,
        linear_gene_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> CellAnnotationOutput:
        r"""
        gene_ids, gene_values, gene_mask: as in [`ScInterpreterModel.forward`].
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Label indices in `[0, config.num_labels)`; when given, the output carries the cross-entropy loss.
        linear_gene_ids, linear_gene_values, linear_gene_mask (*optional*): the longer gene list that the linear gene
            scores read (the processor's `n_linear_genes`); without them they read the soft tokens' genes.
        """
        outputs = self.model(gene_ids, gene_values, gene_mask, output_hidden_states=output_hidden_states)
        logits = self.head(outputs.cell_embeddings.to(self.head.dense.weight.dtype))
        if self.gene_score_weights is not None:
            logits = logits + self.linear_gene_scores(gene_ids, gene_values, gene_mask, linear_gene_ids,
                                                      linear_gene_values, linear_gene_mask)
        loss = None
        if labels is not None:
            weight = None
            if self.config.class_weights is not None:  # only older folders carry them (see the config)
                weight = torch.tensor(self.config.class_weights, dtype=torch.float32, device=logits.device)
            loss = nn.functional.cross_entropy(
                logits.float(), labels.to(logits.device), weight=weight, label_smoothing=self.config.label_smoothing
            )
        return CellAnnotationOutput(
            loss=loss, logits=logits, cell_embeddings=outputs.cell_embeddings, hidden_states=outputs.hidden_states
        )

    def linear_gene_scores(
        self,
        gene_ids: torch.LongTensor,
        gene_values: torch.FloatTensor,
        gene_mask: torch.Tensor | None = None,
        linear_gene_ids: torch.LongTensor | None = None,
        linear_gene_values: torch.FloatTensor | None = None,
        linear_gene_mask: torch.Tensor | None = None,
    ) -> torch.FloatTensor:
        r"""
        The linear read of the cell's chosen genes that `forward` adds to the head's logits where
        `config.linear_gene_scores`: `sum_g gene_values[g] * gene_score_weights[gene_ids[g]] + gene_score_bias`
        over the real genes: those of the longer list `linear_gene_*` where given (the processor's `n_linear_genes`),
        else the soft tokens' genes.

        Returns:
            `torch.FloatTensor` of shape `(batch_size, num_labels)`.
        """
        if self.gene_score_weights is None:
            raise ScInterpreterInputError("this model has no linear gene scores (config.linear_gene_scores is False).")
        if linear_gene_ids is None and self.config.n_linear_input_genes:
            raise ScInterpreterInputError(
                f"this model's linear gene scores read each cell's first {self.config.n_linear_input_genes} genes, the "
                "processor's linear_gene_ids / linear_gene_values / linear_gene_mask: pass the whole output of the "
                "model's own processor, e.g. model(**processor(cells))."
            )
        if linear_gene_ids is not None:
            gene_ids, gene_values, gene_mask = linear_gene_ids.long(), linear_gene_values, linear_gene_mask
        if not len(self.gene_score_genes):  # not fitted yet (the head's training): the bias alone, without a cells x genes x labels zero
            return self.gene_score_bias.float().expand(len(gene_ids), -1)
        values = gene_values.float()
        if gene_mask is not None:
            values = values * gene_mask.to(values.dtype)
        row, weighted = self._gene_score_rows(gene_ids)
        values = values * weighted.to(values.dtype)  # genes without a weight score 0
        weights = self.gene_score_weights.float()[row]
        # An elementwise product and sum rather than a matmul: autocast would run a matmul in bfloat16.
        return (values.unsqueeze(-1) * weights).sum(1) + self.gene_score_bias.float()

    def _gene_score_rows(self, gene_ids: torch.LongTensor):
        """Per gene id, its row in `gene_score_weights` and whether it has one (the rows hold only weighted genes,
        sorted by id in `gene_score_genes`); needs at least one weighted gene."""
        scored = self.gene_score_genes
        row = torch.searchsorted(scored, gene_ids).clamp(max=len(scored) - 1)
        return row, scored[row] == gene_ids

    @torch.no_grad()
    def set_linear_gene_scores(self, weights: torch.Tensor, bias: torch.Tensor):
        r"""
        Stores the fitted linear gene scores (`scinterpreter.training.fit_linear_gene_scores`) in the buffers
        `gene_score_genes`, `gene_score_weights` (the rows of the genes with a weight) and `gene_score_bias`, saved
        with the weights (adapter-only folders included).

        Args:
            weights (`torch.FloatTensor` of shape `(gene_vocab_size, num_labels)`): per gene and label.
            bias (`torch.FloatTensor` of shape `(num_labels,)`).
        """
        expected = (self.config.gene_vocab_size, self.config.num_labels)
        if tuple(weights.shape) != expected or tuple(bias.shape) != expected[1:]:
            raise ValueError(f"linear gene scores must have shapes {expected} and {expected[1:]}, got "
                             f"{tuple(weights.shape)} and {tuple(bias.shape)}.")
        device = self.head.dense.weight.device
        weights = weights.detach().float()
        genes = weights.any(-1).nonzero().squeeze(-1)
        self.register_buffer("gene_score_genes", genes.to(device))
        self.register_buffer("gene_score_weights", weights[genes].to(device))
        self.register_buffer("gene_score_bias", bias.detach().float().to(device))
        self.config.linear_gene_scores, self.config.n_scored_genes = True, len(genes)

    def probabilities(self, logits: torch.Tensor) -> torch.FloatTensor:
        """`softmax(logits / T)`, T the calibration temperature fitted on validation cells (1 where none was)."""
        return (logits.float() / (self.config.calibration_temperature or 1.0)).softmax(-1)

    def confidence(self, logits: torch.Tensor, cell_embeddings: torch.Tensor | None = None) -> torch.FloatTensor:
        """
        Per cell, how sure the model is that the cell is of a type it knows (higher: surer), as
        `config.unassigned_score` defines it: the calibrated best probability, the energy `T * logsumexp(logits
        / T)`, the cosine similarity of the cell embedding to the nearest cell-type centroid (`1 -
        centroid_distance`, which needs `cell_embeddings`), or for `"max_probability_and_centroid_distance"` the
        lesser of the probability and the similarity shifted onto the probability's threshold, so that a cell falls
        below `config.unassigned_threshold` when either falls below its own. `config.unassigned_threshold` is fitted
        on this score.
        """
        score = self.config.unassigned_score
        if score in CENTROID_SCORES:
            if cell_embeddings is None:
                raise ScInterpreterInputError(f"unassigned_score={score!r} needs the cells' cell_embeddings.")
            similarity = self._nearest_centroid_similarity(cell_embeddings)
            if score == "centroid_distance":
                return similarity
            if self.config.unassigned_threshold is None or self.config.centroid_similarity_threshold is None:
                raise ScInterpreterInputError(
                    f"unassigned_score={score!r} needs both fitted thresholds (config.unassigned_threshold and "
                    "config.centroid_similarity_threshold), and this model lacks one: retrain it, or set "
                    "config.unassigned_score to 'max_probability'."
                )
            shift = self.config.unassigned_threshold - self.config.centroid_similarity_threshold
            return torch.minimum(self.probabilities(logits).max(-1).values, similarity.to(logits.device) + shift)
        if score == "energy":
            temperature = self.config.calibration_temperature or 1.0
            return temperature * torch.logsumexp(logits.float() / temperature, -1)
        return self.probabilities(logits).max(-1).values

    @torch.no_grad()
    def set_cell_type_centroids(self, cell_embeddings: torch.Tensor, labels: torch.LongTensor):
        r"""
        Stores each cell type's centroid, the mean of its cells' unit-length cell embeddings (from the training
        cells: `scinterpreter.training.calibrate` calls this), as the buffer `cell_type_centroids`, saved with the
        weights (adapter-only folders included), and sets `config.cell_type_centroids`.

        Args:
            cell_embeddings (`torch.FloatTensor` of shape `(n_cells, cell embedding size)`): the cells' embeddings,
                as the forward pass gives them.
            labels (`torch.LongTensor` of shape `(n_cells,)`): their label indices; negative ones are left out. A
                type without cells gets a zero centroid, which no cell is near (similarity 0).
        """
        if cell_embeddings.shape[-1] != cell_embedding_size(self.config):
            raise ValueError(
                f"cell_embeddings have {cell_embeddings.shape[-1]} values per cell, but this model's cell embeddings "
                f"have {cell_embedding_size(self.config)} (cell_pooling={self.config.cell_pooling!r}): pass the "
                "`cell_embeddings` of its own forward pass."
            )
        unit = nn.functional.normalize(cell_embeddings.detach().float().cpu(), dim=-1)
        labels = torch.as_tensor(labels).long().cpu()
        unit, labels = unit[labels >= 0], labels[labels >= 0]
        sums = torch.zeros(self.config.num_labels, unit.shape[-1]).index_add_(0, labels, unit)
        counts = torch.bincount(labels, minlength=self.config.num_labels).clamp(min=1)
        self.register_buffer("cell_type_centroids", (sums / counts[:, None]).to(self.head.dense.weight.device))
        self.config.cell_type_centroids = True

    def centroid_distance(self, cell_embeddings: torch.Tensor) -> torch.FloatTensor:
        r"""
        Per cell, the cosine distance of its embedding to the nearest cell-type centroid (`set_cell_type_centroids`):
        0 in a centroid's direction, larger the farther the cell is from every type the model knows (at most 2).

        Args:
            cell_embeddings (`torch.FloatTensor` of shape `(batch_size, hidden_size)`): as the forward pass gives them.

        Returns:
            `torch.FloatTensor` of shape `(batch_size,)`.
        """
        return 1 - self._nearest_centroid_similarity(cell_embeddings)

    def _nearest_centroid_similarity(self, cell_embeddings: torch.Tensor) -> torch.FloatTensor:
        if self.cell_type_centroids is None:
            raise ScInterpreterInputError(
                "the centroid_distance score needs the cell types' centroids, and this model holds none (it was "
                "calibrated with another unassigned_score, or trained before they were stored): retrain with "
                "`--unassigned_score centroid_distance` (Recipe(unassigned_score='centroid_distance')), or set "
                "config.unassigned_score back to the score its unassigned_threshold was fitted on."
            )
        unit = nn.functional.normalize(cell_embeddings.float(), dim=-1)
        centroids = nn.functional.normalize(self.cell_type_centroids.float().to(unit.device), dim=-1)
        return (unit @ centroids.T).max(-1).values

    @torch.no_grad()
    def gene_attributions(
        self,
        gene_ids: torch.LongTensor,
        gene_values: torch.FloatTensor,
        gene_mask: torch.Tensor | None = None,
        target: torch.LongTensor | None = None,
        max_batch: int = 256,
        linear_gene_ids: torch.LongTensor | None = None,
        linear_gene_values: torch.FloatTensor | None = None,
        linear_gene_mask: torch.Tensor | None = None,
    ) -> torch.FloatTensor:
        r"""
        Leave-one-gene-out attributions: how much the `target` label's logit drops when one gene is removed from the
        cell (the genes after it move up one place, as if the cell had not expressed it): its soft token and, where
        the model has them, its linear gene score.

        Args:
            gene_ids, gene_values, gene_mask: as in [`ScInterpreterModel.forward`].
            target (`torch.LongTensor` of shape `(batch_size,)`, *optional*): label per cell (default: predicted).
            max_batch (`int`, *optional*, defaults to 256): cells with one gene removed per forward pass.
            linear_gene_ids, linear_gene_values, linear_gene_mask (*optional*): as in [`forward`]; a removed gene
                leaves this list too.

        Returns:
            `torch.FloatTensor` of shape `(batch_size, n_top_genes)`: the logit drop per gene, 0 at padding.
        """
        batch_size, n_genes = gene_ids.shape
        if gene_mask is None:
            gene_mask = torch.ones_like(gene_ids)
        linear = {}
        if linear_gene_ids is not None:
            linear = {"linear_gene_ids": linear_gene_ids, "linear_gene_values": linear_gene_values,
                      "linear_gene_mask": torch.ones_like(linear_gene_ids) if linear_gene_mask is None
                      else linear_gene_mask}
        full = self(gene_ids, gene_values, gene_mask, **linear).logits
        target = full.argmax(-1) if target is None else target
        positions = torch.arange(n_genes, device=gene_ids.device)
        # Row j of `keep` lists the positions of a cell without gene j; the freed last place becomes padding.
        keep = (positions[None, :] + (positions[None, :] >= positions[:, None]).long()).clamp(max=n_genes - 1)
        without = {
            "gene_ids": gene_ids[:, keep].reshape(-1, n_genes),
            "gene_values": gene_values[:, keep].reshape(-1, n_genes),
            "gene_mask": (gene_mask[:, keep] * (positions < n_genes - 1).to(gene_mask.dtype)).reshape(-1, n_genes),
        }
        if linear:
            # Row (cell, j) of the longer list: the cell's list without gene j (the padding's id 0 matches nothing,
            # since padding is masked out already).
            removed = torch.where(gene_mask.bool(), gene_ids, torch.full_like(gene_ids, -1))
            kept = (linear["linear_gene_ids"][:, None, :] != removed[:, :, None]).to(linear["linear_gene_mask"].dtype)
            without["linear_gene_ids"] = linear["linear_gene_ids"].repeat_interleave(n_genes, 0)
            without["linear_gene_values"] = linear["linear_gene_values"].repeat_interleave(n_genes, 0)
            without["linear_gene_mask"] = (linear["linear_gene_mask"][:, None, :] * kept).reshape(
                batch_size * n_genes, -1)
        logits = torch.cat([self(**{name: tensor[start : start + max_batch] for name, tensor in without.items()}).logits
                            for start in range(0, batch_size * n_genes, max_batch)])
        target_logits = logits.reshape(batch_size, n_genes, -1).gather(
            2, target[:, None, None].expand(-1, n_genes, 1)).squeeze(-1)
        drop = full.gather(1, target[:, None]) - target_logits
        return torch.where(gene_mask.bool(), drop, torch.zeros_like(drop)).float()

    @torch.no_grad()
    def linear_gene_attributions(
        self,
        gene_ids: torch.LongTensor,
        gene_values: torch.FloatTensor,
        gene_mask: torch.Tensor | None = None,
        target: torch.LongTensor | None = None,
        linear_gene_ids: torch.LongTensor | None = None,
        linear_gene_values: torch.FloatTensor | None = None,
        linear_gene_mask: torch.Tensor | None = None,
    ) -> torch.FloatTensor:
        r"""
        Leave-one-gene-out attributions of the genes that only the linear gene scores read: those of the longer list
        `linear_gene_*` that are not among the cell's soft tokens. Leaving such a gene out changes no soft token, so
        the `target` logit drops by exactly its term of the linear read, `value * weight[gene, target]`: no forward
        pass per gene.

        Args:
            gene_ids, gene_values, gene_mask, target: as in [`gene_attributions`].
            linear_gene_ids, linear_gene_values, linear_gene_mask: as in [`forward`].

        Returns:
            `torch.FloatTensor` of shape `linear_gene_ids.shape`: the logit drop per gene; 0 at padding, at genes
            without a weight and at the soft tokens' genes (whose drop, which also moves the soft tokens, is
            [`gene_attributions`]).
        """
        if self.gene_score_weights is None or linear_gene_ids is None:
            raise ScInterpreterInputError("linear_gene_attributions needs a model with linear gene scores and the "
                                          "processor's longer list (linear_gene_ids / values / mask).")
        if target is None:
            target = self(gene_ids, gene_values, gene_mask, linear_gene_ids=linear_gene_ids,
                          linear_gene_values=linear_gene_values, linear_gene_mask=linear_gene_mask).logits.argmax(-1)
        linear_gene_ids = linear_gene_ids.long()
        real = (torch.ones_like(linear_gene_ids, dtype=torch.bool) if linear_gene_mask is None
                else linear_gene_mask.bool())
        tokens = gene_ids.long() if gene_mask is None else gene_ids.long().masked_fill(~gene_mask.bool(), -1)
        only_linear = real & (linear_gene_ids[:, :, None] != tokens[:, None, :]).all(-1)
        if not len(self.gene_score_genes):
            return torch.zeros(linear_gene_ids.shape, device=linear_gene_ids.device)
        row, weighted = self._gene_score_rows(linear_gene_ids)
        weight = self.gene_score_weights.float()[row, target.to(row.device)[:, None]]  # each cell's target label only
        term = linear_gene_values.float() * weight
        return torch.where(only_linear & weighted, term, torch.zeros_like(term))


__all__ = [
    # Defined in loading_scinterpreter; still importable from here, where user code found them before.
    "backbone_fingerprint",
    "select_backbone_dtype",
    "CellAnnotationOutput",
    "ScInterpreterClassificationHead",
    "ScInterpreterForCellAnnotation",
    "ScInterpreterLoraLinear",
    "ScInterpreterModel",
    "ScInterpreterModelOutput",
    "ScInterpreterPreTrainedModel",
    "ScInterpreterProjector",
]
