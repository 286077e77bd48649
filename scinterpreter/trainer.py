"""`Trainer` for scInterpreter: safetensors and JSON only, and checkpoints without the frozen backbone."""

from pathlib import Path

from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .build import save_model_folder


class ScInterpreterTrainer(Trainer):
    """
    A `Trainer` whose model folders hold no pickle (training arguments go to `training_args.json`) and whose
    checkpoints hold only the trained weights: the backbone and gene table are frozen, so resuming needs only the
    projector, class token and head (`Trainer` reloads checkpoints non-strictly).
    """

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = Path(output_dir if output_dir is not None else self.args.output_dir)
        if not self.args.should_save:
            return
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        if output_dir.name.startswith(PREFIX_CHECKPOINT_DIR):
            trained = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
            state_dict = {name: tensor for name, tensor in (state_dict or model.state_dict()).items() if name in trained}
        save_model_folder(model, self.processing_class, output_dir, state_dict=state_dict)
        (output_dir / "training_args.json").write_text(self.args.to_json_string())
