"""Prepare your own text: a folder, glob or file of .txt/.md (documents) or .jsonl
(``{"text": ...}`` records, or chat conversations for SFT).

    python data/text/prepare.py notes/ [--tokenizer gpt2|PATH]

Same as ``python -m nanogpt_course.data prepare notes/``.
"""

import sys

from nanogpt_course.data.__main__ import main

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        sys.exit("usage: python data/text/prepare.py PATH [--tokenizer gpt2|PATH] [options]")
    sys.exit(main(["prepare", *sys.argv[1:]]))
