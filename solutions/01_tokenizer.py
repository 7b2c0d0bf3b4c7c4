"""Worked solutions for lessons/01_tokenizer."""


def count_pairs(ids: list[int]) -> dict[tuple[int, int], int]:
    """How often each adjacent pair of ids occurs. [1, 2, 1, 2] -> {(1, 2): 2, (2, 1): 1}."""
    counts = {}
    for a, b in zip(ids, ids[1:]):  # overlapping: [5, 5, 5] holds (5, 5) twice
        counts[(a, b)] = counts.get((a, b), 0) + 1
    return counts


def merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every occurrence of `pair` in `ids` by `new_id`, left to right."""
    out = []
    i = 0
    while i < len(ids):
        if ids[i:i + 2] == list(pair):  # a slice of one element never equals a pair
            out.append(new_id)
            i += 2  # both ids of the pair are used up
        else:
            out.append(ids[i])
            i += 1
    return out


def encode(text: str, ranks: dict[bytes, int]) -> list[int]:
    """Text -> ids: start from bytes, repeatedly join the adjacent pair whose bytes have the
    lowest id (the earliest-learned token), leftmost first, until no pair is a token."""
    parts = [bytes([b]) for b in text.encode("utf-8")]
    while len(parts) >= 2:
        candidates = [(ranks[parts[i] + parts[i + 1]], i)
                      for i in range(len(parts) - 1) if parts[i] + parts[i + 1] in ranks]
        if not candidates:
            break
        _, i = min(candidates)  # lowest id, then lowest position
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return [ranks[p] for p in parts]


def decode(ids: list[int], vocab: dict[int, bytes]) -> str:
    """Ids -> text; bytes that are not valid UTF-8 become the replacement character."""
    data = b"".join(vocab[i] for i in ids)
    return data.decode("utf-8", errors="replace")
