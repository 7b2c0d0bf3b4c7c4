"""Prepare tinyshakespeare: tiny Shakespeare (1 MB): the data mirror's copy, else downloaded.

Same as `python -m nanogpt_course.data prepare tinyshakespeare [options]`; run with --help for the options
(--tokenizer gpt2|PATH, --workers, --force, ...).
"""

import sys

from nanogpt_course.data.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["prepare", "tinyshakespeare", *sys.argv[1:]]))
