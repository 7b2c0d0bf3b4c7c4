"""Worked solutions for lessons/07_data_pipeline."""

import torch


def random_windows(tokens, starts, seq_len):
    """Windows of seq_len + 1 tokens at each start -> (inputs, targets), both (B, seq_len) int64."""
    tokens = torch.as_tensor(tokens)
    rows = torch.stack([tokens[s:s + seq_len + 1] for s in starts]).long()
    return rows[:, :-1], rows[:, 1:]  # the target of position t is the token at t + 1


def pack_best_fit(lengths, row_len):
    """Pack documents 0..n-1 into rows of row_len tokens; each row is [(doc, taken), ...]."""
    waiting = sorted((n, doc) for doc, n in enumerate(lengths))  # shortest first
    rows = []
    while waiting:
        row, space = [], row_len
        while space > 0 and waiting:
            fitting = [i for i, (n, _) in enumerate(waiting) if n <= space]
            i = fitting[-1] if fitting else 0  # the longest that fits, else crop the shortest
            n, doc = waiting.pop(i)
            row.append((doc, min(n, space)))
            space -= min(n, space)
        rows.append(row)
    return rows


def sft_targets(ids, mask):
    """Row of T+1 ids and its 0/1 mask -> (T,) targets, -1 where the next token is not learned."""
    ids, mask = torch.as_tensor(ids).long(), torch.as_tensor(mask)
    targets = ids[1:].clone()
    targets[mask[1:] == 0] = -1
    return targets
