"""A 259-id byte-level tokenizer with the interface the data pipeline needs.

Ids 0-255 are the UTF-8 bytes, 256 is ``<|bos|>``, 257 ``<|im_start|>``, 258 ``<|im_end|>``.
It needs no files and no training, which makes it handy for tests and for showing the
pipeline's mechanics; real runs use :class:`nanogpt_course.tokenizer.Tokenizer`. The chat
rendering follows the same ChatML rules (assistant content and its ``<|im_end|>`` are
learned, everything else is masked).
"""

from __future__ import annotations

from collections.abc import Iterable


class ByteTokenizer:
    """Bytes as tokens: ``encode("hi") == [104, 105]``; ``bos_id == 256``."""

    identity = "bytes"
    vocab_size = 259
    bos_id = 256
    special_tokens = {"<|bos|>": 256, "<|im_start|>": 257, "<|im_end|>": 258}

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: Iterable[str], num_threads: int = 1) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids) -> str:
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        names = {v: k for k, v in self.special_tokens.items()}
        out = bytearray()
        for i in ids:
            out += names[i].encode() if i in names else bytes([i])
        return out.decode("utf-8", errors="replace")

    def render_chat(self, messages, *, max_tokens: int | None = None):
        """ChatML ``(ids, loss_mask)``; the mask is 1 on assistant content + ``<|im_end|>``."""
        ids, mask = [self.bos_id], [0]
        for m in messages:
            header = [257] + self.encode(m["role"] + "\n")
            body = self.encode(m["content"]) + [258]
            learn = int(m["role"] == "assistant")
            ids += header + body + [10]
            mask += [0] * len(header) + [learn] * len(body) + [0]
        if max_tokens is not None:
            ids, mask = ids[:max_tokens], mask[:max_tokens]
        return ids, mask
