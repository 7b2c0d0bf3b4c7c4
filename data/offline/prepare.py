"""Prepare offline: the offline corpus: Python's and the installed packages' own sources and docs.

Same as `python -m nanogpt_course.data prepare offline [options]`; run with --help for the options
(--tokenizer gpt2|PATH, --workers, --force, ...).
"""

import sys

from nanogpt_course.data.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["prepare", "offline", *sys.argv[1:]]))
