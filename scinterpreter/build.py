"""Builds a fresh scInterpreter model and processor from a backbone, a gene table and a label set."""

import logging
import shutil
from dataclasses import replace
from pathlib import Path

import torch

from configuration_scinterpreter import DEFAULT_INSTRUCTION, ScInterpreterConfig
from loading_scinterpreter import backbone_fingerprint, select_backbone_dtype
from modeling_scinterpreter import ScInterpreterForCellAnnotation
from processing_scinterpreter import ScInterpreterProcessor

from .backbone import load_backbone
from .genes import GeneTable, build_gene_table, load_gene_descriptions, load_gene_id_maps
from .recipe import CONFIG_FIELDS, PROCESSOR_FIELDS, Recipe
from .safety import REMOTE_CODE_FILES

logger = logging.getLogger(__name__)

PIPELINE_TASK = "cell-annotation"
CODE_DIR = Path(__file__).resolve().parent.parent
PIPELINE_FILE = CODE_DIR / "pipeline_scinterpreter.py"


def register_auto_classes(config: ScInterpreterConfig):
    """Makes `save_pretrained` copy the code files and write `auto_map`, so folders load with trust_remote_code."""
    ScInterpreterConfig.register_for_auto_class()
    ScInterpreterForCellAnnotation.register_for_auto_class("AutoModel")
    ScInterpreterProcessor.register_for_auto_class("AutoProcessor")
    config.custom_pipelines = {
        PIPELINE_TASK: {"impl": "pipeline_scinterpreter.CellAnnotationPipeline", "pt": ["AutoModel"], "type": "multimodal"}
    }


def save_model_folder(model, processor, folder, state_dict=None, adapter_only=False):
    """
    Writes a Hub model folder: weights (safetensors), config with `auto_map` and `custom_pipelines`, processor,
    and the code files, the `cell-annotation` pipeline's included. With `adapter_only`, only the trained weights
    (the backbone and gene table are loaded again from where the config says).
    """
    folder = Path(folder)
    register_auto_classes(model.config)
    if adapter_only:
        model.save_pretrained(folder, adapter_only=True)
    else:
        model.save_pretrained(folder, state_dict=state_dict)
    if processor is not None:
        processor.save_pretrained(folder)
    shutil.copy(PIPELINE_FILE, folder / PIPELINE_FILE.name)
    # `save_pretrained` copies the model's and the processor's code files and what they import; what is still
    # missing (the processor's file when no processor is saved) comes from here, so every folder holds all of them.
    for name in REMOTE_CODE_FILES:
        if not (folder / name).is_file():
            shutil.copy(CODE_DIR / name, folder / name)
    return folder


def build_model(
    labels,
    recipe: Recipe | None = None,
    *,
    gene_table: GeneTable | None = None,
    backbone_dtype: torch.dtype | None = None,
    device="cpu",
    instruction: str = DEFAULT_INSTRUCTION,
    **changes,
):
    """
    A new, untrained `ScInterpreterForCellAnnotation` and its unfitted `ScInterpreterProcessor`, as `recipe` says.

        model, processor = build_model(["alpha", "beta"])                         # what train.py builds by default
        model, processor = build_model(["alpha", "beta"], num_backbone_layers=2)  # one recipe field changed

    Args:
        labels (`list[str]`): the cell types, in label-id order.
        recipe (`Recipe`, *optional*): backbone, layers, gene table, sizes and options (default: `Recipe()`).
        gene_table (`GeneTable`, *optional*): gene vocabulary and embeddings (default: built as the recipe says).
        backbone_dtype (`torch.dtype`, *optional*): dtype of the frozen backbone (default: `recipe.backbone_dtype`
            on `device`).
        changes: `Recipe` fields to change, e.g. `n_top_genes=32`. `soft_token_rms` may be a number, `"auto"` (the
            RMS of the backbone's token embeddings) or `"none"` / `None` (the projector's scale, as in the paper).
    """
    recipe = replace(recipe or Recipe(), **changes)
    if gene_table is None:
        descriptions = load_gene_descriptions(path=recipe.gene_descriptions) if recipe.gene_descriptions else None
        gene_table = build_gene_table(descriptions, encoder=recipe.gene_encoder, center=recipe.center_gene_table)
    backbone_dtype = backbone_dtype or select_backbone_dtype(device, recipe.backbone_dtype)
    num_layers = recipe.num_backbone_layers if (recipe.num_backbone_layers or 0) > 0 else None
    language_model, tokenizer = load_backbone(recipe.backbone, num_layers, dtype=torch.float32)
    soft_token_rms = recipe.soft_token_rms
    if soft_token_rms == "auto":
        soft_token_rms = token_embedding_rms(language_model.embed_tokens.weight)
    elif soft_token_rms in (None, "none"):
        soft_token_rms = None
    else:
        soft_token_rms = float(soft_token_rms)
    config = ScInterpreterConfig(
        text_config=language_model.config.to_dict(),
        gene_vocab_size=len(gene_table.vocab),
        gene_embedding_dim=gene_table.dim,
        instruction=instruction,
        instruction_token_ids=tokenizer(instruction)["input_ids"],
        species=gene_table.species,
        gene_text_encoder=gene_table.encoder,
        gene_table_centered=gene_table.centered,
        gene_table_hash=gene_table.content_hash,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        backbone_name_or_path=recipe.backbone,
        soft_token_rms=soft_token_rms,
        scinterpreter_version=package_version(),
        backbone_fingerprint=backbone_fingerprint(language_model.state_dict()),
        **{name: getattr(recipe, name) for name in CONFIG_FIELDS},
    )
    register_auto_classes(config)
    model = ScInterpreterForCellAnnotation(config)
    model.model.load_backbone_weights(language_model.state_dict())
    model.model.gene_embeddings.copy_(torch.from_numpy(gene_table.embeddings))
    model.set_backbone_dtype(backbone_dtype).freeze_backbone()
    processor_fields = {name: getattr(recipe, name) for name in PROCESSOR_FIELDS}
    if not recipe.linear_gene_scores:  # nothing would read the longer list
        processor_fields["n_linear_genes"] = 0
    processor = build_processor(gene_table, **processor_fields)
    return model, processor


def token_embedding_rms(embed_tokens_weight: torch.Tensor) -> float:
    """`soft_token_rms="auto"`: the root mean square of the backbone's whole token-embedding table (vocabulary x
    hidden size), to 4 decimals, so that soft tokens come in at the scale of the backbone's own tokens."""
    return round(float(embed_tokens_weight.detach().float().pow(2).mean().sqrt()), 4)


def package_version() -> str:
    """The installed scinterpreter's version, recorded in every model config it builds."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("scinterpreter")
    except PackageNotFoundError:
        return "unknown"


def build_processor(gene_table: GeneTable, **processor_kwargs) -> ScInterpreterProcessor:
    """An unfitted `ScInterpreterProcessor` for `gene_table`'s vocabulary, with its alias, ID and ortholog maps."""
    return ScInterpreterProcessor(
        gene_vocab=gene_table.vocab, species=gene_table.species, **load_gene_id_maps(gene_table.vocab),
        **processor_kwargs,
    )
