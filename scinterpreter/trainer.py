"""`Trainer` for scInterpreter: saves safetensors and JSON only."""

import os
from pathlib import Path

from transformers import Trainer


class ScInterpreterTrainer(Trainer):
    """A `Trainer` whose saved model folders hold no pickle: training arguments go to `training_args.json`."""

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        self.accelerator.unwrap_model(self.model, keep_torch_compile=False).save_pretrained(
            output_dir, state_dict=state_dict
        )
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        Path(output_dir, "training_args.json").write_text(self.args.to_json_string())
