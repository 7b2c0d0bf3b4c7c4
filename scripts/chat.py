"""Terminal chat, as the seed named it: ``python scripts/chat.py --checkpoint CKPT``.

A thin wrapper around ``python -m nanogpt_course.chat`` (same flags; see ``--help``).
"""

import sys

from nanogpt_course.chat.cli import main

if __name__ == "__main__":
    sys.exit(main())
