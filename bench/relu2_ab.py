"""A/B: the same short training run with the MLP's fast relu² and with the readable one.

    python bench/relu2_ab.py fast OUT_A & python bench/relu2_ab.py readable OUT_B

300 steps of a d4 on the ``offline`` corpus, CPU, seed 0, 8 × 256 tokens per step (about
30 minutes each on one core); compare the ``loss`` lines of the two ``metrics.jsonl``.
``readable`` swaps ``model.relu_squared`` for ``relu_squared_reference`` before training.
"""

import sys

import torch

import nanogpt_course.model as model_module
from nanogpt_course.train import parse_args, train

if __name__ == "__main__":
    which, out = sys.argv[1], sys.argv[2]
    if which not in ("fast", "readable"):
        sys.exit("usage: python bench/relu2_ab.py fast|readable OUT_DIR")
    if which == "readable":
        model_module.relu_squared = model_module.relu_squared_reference
    torch.set_num_threads(1)
    train(parse_args(["--depth", "4", "--data", "offline", "--max-steps", "300",
                      "--seq-len", "256", "--device-batch-size", "8",
                      "--total-batch-size", "2048", "--eval-every", "0", "--sample-every", "0",
                      "--save-every", "0", "--log-every", "50", "--seed", "0", "--out", out,
                      "--device", "cpu"]))
