"""Prepare task_mixture: TaskMixture chat data: the data mirror's files offline, SmolTalk + MMLU + GSM8K online.

Same as `python -m nanogpt_course.data prepare task_mixture [options]`; run with --help for the options
(--tokenizer gpt2|PATH, --workers, --force, ...).
"""

import sys

from nanogpt_course.data.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["prepare", "task_mixture", *sys.argv[1:]]))
