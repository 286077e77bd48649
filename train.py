"""Fine-tune scInterpreter on a labelled single-cell dataset, evaluate it on held-out cells and save it.

    python train.py --dataset data.h5ad --label_column cell_type [--split_file split.json] [TrainingArguments flags]

The same as the installed `scinterpreter-train` command: the code is `scinterpreter/train.py`; this file keeps
`python train.py`, `torchrun ... train.py` and `import train` working from a checkout.
"""

import sys

from scinterpreter.train import main

if __name__ == "__main__":
    main(sys.argv[1:])
