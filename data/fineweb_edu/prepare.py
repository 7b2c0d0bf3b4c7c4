"""Prepare fineweb_edu: FineWeb-Edu sample-10BT: the default pretraining set (downloads ~2.15 GB per parquet file).

Same as `python -m nanogpt_course.data prepare fineweb_edu [options]`; run with --help for the options
(--tokenizer gpt2|PATH, --workers, --force, ...).
"""

import sys

from nanogpt_course.data.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["prepare", "fineweb_edu", *sys.argv[1:]]))
