"""Raw rows from the Hugging Face Hub and from local parquet/jsonl files.

``datasets`` and ``pyarrow`` are optional (``pip install -e .[data]``) and imported only
when a function here needs them. Everything that touches the Hub goes through
:func:`load_hub`, which tests replace with local files in the Hub datasets' schemas.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from .. import paths

HF_URL = "https://huggingface.co/datasets/{repo}/resolve/main/{path}"
FINEWEB_REPO = "HuggingFaceFW/fineweb-edu"
FINEWEB_CONFIG = "sample-10BT"
FINEWEB_FILES = [f"sample/10BT/{i:03d}_00000.parquet" for i in range(14)]
# From the Hub's LFS pointers (commit 84e8104e). The other ten files are checked only
# against the Content-Length the server announces.
FINEWEB_SHA256 = {
    0: "b1ba7b2ce4cb5ea6ef42dca40263eabb85f37700d01693a68e9b30a31d78e871",
    1: "3fcf2dc69cd52503986276d3d2d26a8c356d0f2ea28a0de4fdbda8cf87755693",
    2: "547ae182d132c9f06b6ce63149567208ea9f57630bfd9b1a2938e504f0c9ebd7",
    3: "22184e6eb25759ddd97783751ffc73e1705dfa2542e630dae1f2a8bac8ee6ddb",
}
FINEWEB_FILE_BYTES = 2_152_500_000  # each file is ~2.15 GB (sizes 2,151,796,315 .. 2,152,819,114)
OPENWEBTEXT_REPO = "Skylion007/openwebtext"
SMOLTALK_REPO = "HuggingFaceTB/smol-smoltalk"
MMLU_REPO = "cais/mmlu"
GSM8K_REPO = "openai/gsm8k"


def _datasets():
    try:
        import datasets
    except ImportError as err:
        raise ImportError("this dataset needs the optional `datasets` package: "
                          "pip install -e '.[data]'") from err
    return datasets


def load_hub(repo: str, config: str | None, split: str) -> Iterable[dict]:
    """Stream one split of a Hub dataset (nothing is written to the datasets cache)."""
    datasets = _datasets()
    try:
        return datasets.load_dataset(repo, config, split=split, streaming=True)
    except Exception as err:  # offline, unknown repo, gated dataset, ...
        raise ConnectionError(
            f"could not open {repo}{'/' + config if config else ''} ({split}) on the Hugging "
            f"Face Hub: {type(err).__name__}: {err}. This needs internet access (and "
            f"HF_HUB_OFFLINE / HF_DATASETS_OFFLINE unset).") from err


def local_rows(files: list[Path]) -> Iterator[dict]:
    """Rows of local parquet or json(l) files, read through ``datasets`` in streaming mode."""
    datasets = _datasets()
    groups = {"parquet": [f for f in files if f.suffix == ".parquet"],
              "json": [f for f in files if f.suffix in (".jsonl", ".json")]}
    for builder, group in groups.items():
        if group:
            ds = datasets.load_dataset(builder, data_files=[str(f) for f in group],
                                       split="train", streaming=True)
            yield from ds


def parquet_rows(files: list[Path], columns: tuple[str, ...] = ("text",),
                 batch_size: int = 1024) -> Iterator[dict]:
    """Rows of parquet files read with pyarrow, only ``columns`` that exist in each file."""
    try:
        import pyarrow.parquet as pq
    except ImportError as err:
        raise ImportError("reading parquet needs pyarrow: pip install -e '.[data]'") from err
    for file in files:
        try:
            pf = pq.ParquetFile(file)
        except Exception as err:
            raise ValueError(f"{file}: not a readable parquet file ({err}); delete it and "
                             f"download it again") from err
        wanted = [c for c in columns if c in pf.schema_arrow.names]
        if "text" not in wanted:
            raise ValueError(f"{file}: no 'text' column (columns: {pf.schema_arrow.names})")
        for batch in pf.iter_batches(batch_size=batch_size, columns=wanted):
            yield from batch.to_pylist()


def download_fineweb(max_files: int | None = None, *, folder: Path | None = None,
                     base_url: str | None = None) -> list[Path]:
    """Download FineWeb-Edu sample-10BT parquet files (the first ``max_files``) to the cache.

    Prints the size and time estimate first and refuses to start without the disk space.
    ``base_url`` replaces ``https://huggingface.co/datasets/<repo>/resolve/main`` (tests,
    mirrors); the environment variable ``NANOGPT_COURSE_FINEWEB_URL`` does the same.
    """
    from . import download as dl

    names = FINEWEB_FILES[:max_files] if max_files else FINEWEB_FILES
    folder = folder or paths.cache_dir("raw", "fineweb_edu")
    base = base_url or os.environ.get("NANOGPT_COURSE_FINEWEB_URL")
    urls = [f"{base.rstrip('/')}/{n}" if base else HF_URL.format(repo=FINEWEB_REPO, path=n)
            for n in names]
    targets = [folder / Path(n).name for n in names]
    todo = [(i, u, t) for i, (u, t) in enumerate(zip(urls, targets)) if not t.is_file()]
    if todo:
        plan = dl.estimate([u for _, u, _ in todo], [None] * len(todo))
        plan["bytes"] = plan["bytes"] or FINEWEB_FILE_BYTES * len(todo)
        plan["seconds"] = plan["bytes"] / (dl.ASSUMED_MB_PER_S * 1e6)
        print(f"FineWeb-Edu: downloading {dl.describe(plan)} to {folder}", flush=True)
        dl.check_space(folder, plan["bytes"])
    for i, url, target in todo:
        dl.download(url, target, sha256=FINEWEB_SHA256.get(i))
    return targets
