"""`Trainer` for scInterpreter: safetensors and JSON only, and checkpoints without the frozen backbone."""

import json
import random
import re
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .build import save_model_folder

OPTIMIZER_TENSORS, OPTIMIZER_JSON = "optimizer.safetensors", "optimizer.json"
SCHEDULER_JSON = "scheduler.json"


class ClassBalancedSampler(torch.utils.data.Sampler):
    """
    Draws `len(weights)` cells per epoch with replacement, in proportion to `weights`, from a generator seeded with
    `seed + epoch`: every epoch (and every process under DDP) gets the same draw again, so a resumed run repeats the
    interrupted epoch exactly.
    """

    def __init__(self, weights, seed: int):
        self.weights = torch.as_tensor(weights, dtype=torch.double)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self):
        return len(self.weights)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        yield from torch.multinomial(self.weights, len(self.weights), replacement=True, generator=generator).tolist()


def _rng_file(args, suffix):
    return f"rng_state.{suffix}" if args.world_size <= 1 else f"rng_state_{args.process_index}.{suffix}"


class ScInterpreterTrainer(Trainer):
    """
    A `Trainer` that writes no pickle: model folders get `training_args.json`, and checkpoints keep the optimizer,
    scheduler and random-number states as safetensors + JSON instead of `torch.save` files. Checkpoints hold only
    the trained weights (projector, class token, head): the backbone and gene table are frozen, and `Trainer`
    reloads checkpoints non-strictly, so `--resume_from_checkpoint` and `--load_best_model_at_end` work with them.
    With `train_sample_weights` (one per training cell), cells are drawn with replacement in those proportions.
    """

    def __init__(self, *args, adapter_only: bool = False, train_sample_weights=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.adapter_only = adapter_only
        self.train_sample_weights = train_sample_weights

    def _get_train_sampler(self, train_dataset=None):
        if self.train_sample_weights is None:
            return super()._get_train_sampler(train_dataset)
        return ClassBalancedSampler(self.train_sample_weights, seed=self.args.seed)

    def _is_checkpoint(self, output_dir: Path) -> bool:
        """A Trainer checkpoint (`<output_dir>/checkpoint-<step>`), not a model folder that happens to be named so."""
        return (re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-\d+", output_dir.name) is not None
                and output_dir.parent.resolve() == Path(self.args.output_dir).resolve())

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = Path(output_dir if output_dir is not None else self.args.output_dir)
        if not self.args.should_save:
            return
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        checkpoint = self._is_checkpoint(output_dir)
        if checkpoint:
            trained = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
            state_dict = {name: tensor for name, tensor in (state_dict or model.state_dict()).items() if name in trained}
        save_model_folder(model, self.processing_class, output_dir, state_dict=state_dict,
                          adapter_only=self.adapter_only and not checkpoint)
        (output_dir / "training_args.json").write_text(self.args.to_json_string())

    def _issue_warnings_after_load(self, load_result) -> None:
        # Checkpoints hold only the trained weights: the frozen ones are missing on purpose.
        trained = {name for name, parameter in self.model.named_parameters() if parameter.requires_grad}
        missing = [key for key in load_result.missing_keys if key in trained]
        if missing or load_result.unexpected_keys:
            super()._issue_warnings_after_load(type(load_result)(missing, load_result.unexpected_keys))

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if not self.args.should_save:
            return
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        state = self.optimizer.state_dict()
        tensors = {f"{index}.{name}": value.contiguous() for index, values in state["state"].items()
                   for name, value in values.items() if torch.is_tensor(value)}
        save_file(tensors, output_dir / OPTIMIZER_TENSORS)
        (output_dir / OPTIMIZER_JSON).write_text(json.dumps({"param_groups": state["param_groups"]}))
        (output_dir / SCHEDULER_JSON).write_text(json.dumps(self.lr_scheduler.state_dict(), default=lambda _: None))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if checkpoint is None or not (Path(checkpoint) / OPTIMIZER_TENSORS).is_file():
            return super()._load_optimizer_and_scheduler(checkpoint)
        checkpoint = Path(checkpoint)
        state = {}
        for key, value in load_file(checkpoint / OPTIMIZER_TENSORS).items():
            index, name = key.split(".", 1)
            state.setdefault(int(index), {})[name] = value
        param_groups = json.loads((checkpoint / OPTIMIZER_JSON).read_text())["param_groups"]
        self.optimizer.load_state_dict({"state": state, "param_groups": param_groups})
        scheduler_state = json.loads((checkpoint / SCHEDULER_JSON).read_text())
        self.lr_scheduler.load_state_dict({k: v for k, v in scheduler_state.items() if v is not None})

    def _save_rng_state(self, output_dir: str) -> None:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        version, mt_state, gauss = random.getstate()
        kind, keys, position, has_gauss, cached = np.random.get_state()
        tensors = {"cpu": torch.random.get_rng_state(), "numpy_keys": torch.from_numpy(keys.astype(np.int64))}
        if torch.cuda.is_available():
            tensors["cuda"] = torch.cuda.random.get_rng_state()
        save_file(tensors, output_dir / _rng_file(self.args, "safetensors"))
        (output_dir / _rng_file(self.args, "json")).write_text(json.dumps({
            "python": [version, list(mt_state), gauss], "numpy": [kind, int(position), int(has_gauss), float(cached)],
        }))

    def _load_rng_state(self, checkpoint: str | None) -> None:
        if checkpoint is None or not (Path(checkpoint) / _rng_file(self.args, "safetensors")).is_file():
            return super()._load_rng_state(checkpoint)
        tensors = load_file(Path(checkpoint) / _rng_file(self.args, "safetensors"))
        states = json.loads((Path(checkpoint) / _rng_file(self.args, "json")).read_text())
        version, mt_state, gauss = states["python"]
        random.setstate((version, tuple(mt_state), gauss))
        kind, position, has_gauss, cached = states["numpy"]
        np.random.set_state((kind, tensors["numpy_keys"].numpy().astype(np.uint32), position, has_gauss, cached))
        torch.random.set_rng_state(tensors["cpu"])
        if torch.cuda.is_available() and "cuda" in tensors:
            torch.cuda.random.set_rng_state(tensors["cuda"])
