"""One process of the 2-process training test: `train.main`, then this rank's trained weights to a file."""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import train  # noqa: E402


class SaveTrainedWeights(TrainerCallback):
    def __init__(self, folder):
        self.folder = Path(folder)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        trained = {name: p.detach().clone().contiguous() for name, p in model.named_parameters() if p.requires_grad}
        save_file(trained, self.folder / f"rank{torch.distributed.get_rank()}.safetensors",
                  metadata={"world_size": str(torch.distributed.get_world_size()), "steps": str(state.global_step)})


if __name__ == "__main__":
    weights_folder, argv = sys.argv[1], sys.argv[2:]
    train.main(argv, callbacks=[SaveTrainedWeights(weights_folder)])
