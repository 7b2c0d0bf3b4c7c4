"""``python -m nanogpt_course.chat --checkpoint CKPT``: terminal chat (see :mod:`.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
