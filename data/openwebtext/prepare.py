"""Prepare openwebtext: OpenWebText (legacy): local parquet/jsonl under $NANOGPT_COURSE_DATA/openwebtext, else a Hub stream.

Same as `python -m nanogpt_course.data prepare openwebtext [options]`; run with --help for the options
(--tokenizer gpt2|PATH, --workers, --force, ...).
"""

import sys

from nanogpt_course.data.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["prepare", "openwebtext", *sys.argv[1:]]))
