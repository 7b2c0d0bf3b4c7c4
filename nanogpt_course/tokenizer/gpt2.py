"""GPT-2's BPE, built offline from OpenAI's two files (``vocab.bpe``, ``encoder.json``).

GPT-2 stores tokens as *printable* strings: each byte is mapped to a visible character
(bytes that print as themselves keep their character; the other 68, such as space and
control bytes, are shifted to U+0100 onwards, so a space shows as ``Ġ``). ``vocab.bpe``
lists the 50,000 merges in order; ``encoder.json`` maps every token string to its id.
An id is a rank: the 256 single bytes first, then merge ``i`` gets id ``256 + i``.

Both files ship inside this package (``nanogpt_course/tokenizer/gpt2_bpe/``, with OpenAI's
license notice), byte-identical to the published ones: their sha256 sums are the ones
tiktoken pins, and they are checked on load. So GPT-2 tokenization never needs the network
or the data mirror. Only if the packaged copy is missing or damaged (a broken install) are
the data mirror (``$NANOGPT_COURSE_DATA/gpt2_bpe/``), the cache (``<cache>/raw/gpt2_bpe/``)
and finally tiktoken's own ``get_encoding("gpt2")`` (a download) tried.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

from .. import paths
from .core import CHAT_SPECIALS, Tokenizer, TokenizerFileError
from .patterns import GPT2_PATTERN

ENDOFTEXT = "<|endoftext|>"
FILES = ("vocab.bpe", "encoder.json")
URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
N_GPT2 = 50257  # 50,000 merges + 256 bytes + <|endoftext|>
PACKAGED = Path(__file__).resolve().parent / "gpt2_bpe"
# The sums tiktoken pins for the published files (tiktoken_ext/openai_public.py, gpt2()).
SHA256 = {
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}


def byte_to_char() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte: ``byte_to_char()[32] == "Ġ"``."""
    keep = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    table = {b: chr(b) for b in keep}
    shifted = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + n) for n, b in enumerate(shifted)})
    return table


def ranks_from_files(vocab_bpe: Path, encoder_json: Path) -> list[bytes]:
    """GPT-2's byte string for each id 0..50255, from the merges, checked against the ids."""
    char_to_byte = {c: b for b, c in byte_to_char().items()}

    def to_bytes(token: str) -> bytes:
        return bytes(char_to_byte[c] for c in token)

    try:
        encoder = json.loads(Path(encoder_json).read_text(encoding="utf-8"))
        lines = Path(vocab_bpe).read_text(encoding="utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1:] if line.strip()]
        by_id = {i: to_bytes(t) for t, i in encoder.items() if t != ENDOFTEXT}
        ranks = [by_id[i] for i in range(256)]  # the single bytes, in GPT-2's id order
        ranks += [to_bytes(a) + to_bytes(b) for a, b in merges]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise TokenizerFileError(f"GPT-2 BPE files in {Path(vocab_bpe).parent} are corrupt or "
                                 f"unreadable ({type(err).__name__}: {err})") from err
    # The ids in encoder.json must equal the merge order, or tiktoken would encode wrongly.
    mismatched = [i for i, t in enumerate(ranks) if by_id.get(i) != t]
    if len(ranks) != N_GPT2 - 1 or mismatched or encoder.get(ENDOFTEXT) != N_GPT2 - 1:
        raise TokenizerFileError(
            f"GPT-2 BPE files in {Path(vocab_bpe).parent} disagree: expected 50,000 merges whose "
            f"order matches encoder.json ids (first mismatch at id {mismatched[:1]}); "
            f"re-download them from {URL}")
    return ranks


def _download_ranks() -> list[bytes]:
    """tiktoken's GPT-2 ranks (downloads on first use into tiktoken's cache)."""
    import tiktoken

    enc = tiktoken.get_encoding("gpt2")
    by_rank = sorted(enc._mergeable_ranks.items(), key=lambda kv: kv[1])
    return [t for t, _ in by_rank]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def packaged_files() -> tuple[Path, Path] | None:
    """The copies shipped in this package, if present and byte-identical to OpenAI's."""
    files = tuple(PACKAGED / name for name in FILES)
    if all(f.is_file() and sha256_of(f) == SHA256[f.name] for f in files):
        return files
    return None


def find_files() -> tuple[Path, Path] | None:
    """``(vocab.bpe, encoder.json)``: the packaged copies, else the data mirror or the
    cache, or None."""
    shipped = packaged_files()
    if shipped is not None:
        return shipped
    found = [paths.find_raw(f"gpt2_bpe/{name}") for name in FILES]
    if all(found) and found[0].parent == found[1].parent:
        return found[0], found[1]
    folder = paths.find_raw("gpt2_bpe")
    if folder is not None and all((folder / n).is_file() for n in FILES):
        return folder / FILES[0], folder / FILES[1]
    return None


def _missing_message(err: BaseException) -> str:
    mirror = paths.data_dir()
    places = [f"{PACKAGED} (shipped with the package: missing or damaged, reinstall it)",
              str(mirror / "gpt2_bpe") if mirror else "$NANOGPT_COURSE_DATA/gpt2_bpe (unset)",
              str(paths.cache_dir("raw", "gpt2_bpe", create=False))]
    return (
        "GPT-2 BPE files (vocab.bpe, encoder.json) not found, and tiktoken could not download "
        f"them ({type(err).__name__}: {err}).\nPut both files in one of:\n  "
        + "\n  ".join(places)
        + f"\n(download from {URL}vocab.bpe and {URL}encoder.json), or connect to the internet."
    )


def load_gpt2_ranks() -> list[bytes]:
    """GPT-2's 50,256 byte-string tokens, from the packaged files (else other local copies,
    else tiktoken's download)."""
    files = find_files()
    if files is not None:
        return ranks_from_files(*files)
    try:
        return _download_ranks()
    except Exception as err:  # no network, blocked proxy, ...: say where to put the files
        from ..paths import MissingDataError

        raise MissingDataError(_missing_message(err)) from err


@functools.lru_cache(maxsize=1)
def gpt2_tokenizer() -> Tokenizer:
    """GPT-2 + chat specials (cached; see :meth:`Tokenizer.gpt2`)."""
    ranks = load_gpt2_ranks()
    specials = {ENDOFTEXT: len(ranks)}
    specials.update({name: len(ranks) + 1 + k for k, name in enumerate(CHAT_SPECIALS)})
    return Tokenizer(ranks, GPT2_PATTERN, specials, bos=ENDOFTEXT, name="gpt2")
