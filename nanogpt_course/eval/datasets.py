"""Where the evaluation data comes from: the CORE bundle, MMLU, GSM8K, HumanEval, SQuAD.

Every file has a fixed upstream URL (a pinned commit) and a checksum: the sha256 of the
exact file, or, for the three CORE files we have never seen, the upstream *git blob id*
(``sha1("blob <size>\\0" + bytes)``), which identifies the bytes just as well. Downloads go
through :func:`nanogpt_course.data.download.download` (retries with backoff, a ``.part``
file, sha256 checked before the rename); a git-blob-checked file is renamed into place only
after its blob id matches. Files land in ``<cache>/raw/<relpath>``, the same layout as the
read-only data mirror (``$NANOGPT_COURSE_DATA``), which is always looked at first.

``python -m nanogpt_course.eval download {core,chatcore,all} [--from URL]`` fetches them;
``--from`` takes any HTTP server that serves files in the mirror's layout.

The manifest below was computed from the data mirror (see its SOURCES.md for provenance).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
from pathlib import Path

from .. import paths

LLM_FOUNDRY = ("https://raw.githubusercontent.com/mosaicml/llm-foundry/"
               "8c8dd48f72168c5d51e2f7b151595892a8fba43d/scripts/eval/local_data/")
MMLU_BASE = ("https://raw.githubusercontent.com/HaeChan0305/MLILAB-FedLLM/"
             "d92730e8bacd7b3a61e551e015e40588e10234b4/data/mmlu/test/")
GSM8K_URL = ("https://raw.githubusercontent.com/openai/grade-school-math/"
             "3101c7d5072418e28b9008a6636bde82a006892c/grade_school_math/data/test.jsonl")
HUMANEVAL_GZ_URL = ("https://raw.githubusercontent.com/openai/human-eval/"
                    "6d43fb980f9fee3c892a914eda09951f772ad10d/data/HumanEval.jsonl.gz")
HUMANEVAL_GZ_SHA256 = "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef"
SQUAD_URL = "https://rajpurkar.github.io/SQuAD-explorer/dataset/dev-v1.1.json"
# The mirror's hellaswag.jsonl is a close substitute (see SOURCES.md); accept it from a mirror.
HELLASWAG_SUBSTITUTE_SHA256 = "a493a7d5e35ad9cb73213d4323c98a497cd635b506b82fac8e567942de9eb139"

CORE_FILES = {  # eval_data/<uri>: (sha256 or None, git blob id or None)
    "commonsense_reasoning/commonsense_qa.jsonl": ("2771f63f8127c0725b1f6b0ef2cd2ef6469168ae5875fc8d276b25b4f32c8c1a", None),
    "commonsense_reasoning/copa.jsonl": ("595dca44dec54c849490bd403a3e24a29e3b944065783222ebb0eb1a55298846", None),
    "commonsense_reasoning/openbook_qa.jsonl": ("adb2e5c7f8db810ddad4d6b2bf53dcc86dcc545499f7aafcaf42a8e179476c09", None),
    "commonsense_reasoning/piqa.jsonl": ("d2870e73aec5154df3faf259b7700876e11608eebdf69e9d6667435673dbe4e0", None),
    "language_understanding/bigbench_language_identification.jsonl": ("80c98d8e7ab8213513d1643886229c05c40a6837353b07c19ac7bd860668954e", None),
    "language_understanding/lambada_openai.jsonl": ("411bfbe5b9054346b6a19299c0242670adbefb9162efd958593cbc0290b8c9dc", None),
    "language_understanding/winograd_wsc.jsonl": ("746336c27cd2e39a554cb1b8b4869d0f1ae2577ac5bfe799842d26bca5a5bf5e", None),
    "language_understanding/winogrande.jsonl": ("ea1592526f3bfdd0948ed3acb1b4dfa3f83d23698917118688ee1df7f8d4b8d7", None),
    "reading_comprehension/boolq.jsonl": ("454ff101e614370bb1807fe7ebbda6fdb57e794b9662cc1ccae211bf1ff626c8", None),
    "symbolic_problem_solving/agi_eval_lsat_ar.jsonl": ("9ffd73480b51746c11627e56239f8b87035eb255cb92c3a58fd64e2e4b65fb56", None),
    "symbolic_problem_solving/bigbench_cs_algorithms.jsonl": ("8485683a8c7e7e6c9fc6ca3cc81140fd85edb27f34406a6736d1539cf7ebcb3a", None),
    "symbolic_problem_solving/bigbench_dyck_languages.jsonl": ("106ba9ac7507c7ab385c5e59c49cd57aa83025abf080d9b2a2661c0d6c6dbcc5", None),
    "symbolic_problem_solving/bigbench_operators.jsonl": ("41e2964ad619c49edd97c22b2c50f922a0241255d906a754bf81a20f4f66b85f", None),
    "symbolic_problem_solving/bigbench_repeat_copy_logic.jsonl": ("8febd2c0080a15680cd17f92bfa30d87abcfac021e646e55d0b8ad69f0cfa767", None),
    "world_knowledge/arc_challenge.jsonl": ("1ae3aeedf1951d881cbd5c2e3a31e78a1993d251479afbe4cb413b6707244636", None),
    "world_knowledge/arc_easy.jsonl": ("d2d12e59543acf9a5ef6079634a72b30215e36c2fd4236fff3bc855d287b87f5", None),
    "world_knowledge/bigbench_qa_wikidata.jsonl": ("bb0d22727cb25beffb022c8e8c0c3e1159c8b3c7bd7284603c0d6491f8616265", None),
    "world_knowledge/jeopardy_all.jsonl": ("187e7f270a440c63d6cf11a57459fdc7e0bce889338225e42cc88e24ee13d52e", None),
    "language_understanding/hellaswag.jsonl": (None, "448321079fdc140bd8566b16b24eda9ceacd3501"),
    "reading_comprehension/squad.jsonl": (None, "dc733b8f58ec666c53fd946198c434b819a00680"),
    "reading_comprehension/coqa.jsonl": (None, "028bd4e51326cc43f8394987ae47fbb271aeba9d"),
}
MMLU_TEST = {  # subject: sha256 of mmlu/test/<subject>_test.csv
    "abstract_algebra": "afdfc6f71eb42297a51f53bd221429671a4065a6425bd7631acb84fef011bfd4",
    "anatomy": "b27ce42f40482ba735cf0de8e8bbba3382d506c099d8483c55e9cacdac4e3eec",
    "astronomy": "1008ecdf7f88a336001b04f739f3fcfff72b3e15fb746880ace2d05f0002c957",
    "business_ethics": "7ce6063b0ed2ba08ac51cc94be1708ce91aeecd17f71cabbb2f86b4e80f3876a",
    "clinical_knowledge": "9ba57061f15ae7263a12eeb413b73d876038e0ce21734ffce411e1ae22662737",
    "college_biology": "872bae5fe76cecb083603a7ba95adc436a8e345f50c5ee232cc8bfa9f9f56713",
    "college_chemistry": "6335fe0f7da7a3ec76a9067869445253111080261df1c560a2527df01f34ae67",
    "college_computer_science": "f06e071452389e4a9f0aa7c5bc07401b282ffd659f9ec08c2d301b1fca471024",
    "college_mathematics": "2929eb3851fa6f37de8188f0a7fa817bec44fb5f5a04efa06f89ea272eae2f0b",
    "college_medicine": "65876236acf78e813e62b78cdc2217c2651785324b8c51148aaffa6d89436d0d",
    "college_physics": "3f67202a7a62da0f0ab3028e0a0cf26a3cffc041283044f51f3e058258eab281",
    "computer_security": "f4b8b8f107144acd0c2b343553986c161a759cd459706cb72f9bb72752655162",
    "conceptual_physics": "7186a0cdcd18dff2183dbd26d44f2d59d01f42687092e1229088735d508c06e1",
    "econometrics": "13f21181bb3a26bfd290284ab80850f9c1e1ba90f00df6f17112b8c68e934cee",
    "electrical_engineering": "d78bba02efa107c61a82f2f82ee93e99366f5626fdf772a03eb3b749073cd1c1",
    "elementary_mathematics": "701d8bbc120fd210a309f5e43c9cbfca8e1f01f6b9a26f43f669f0d29acc45ef",
    "formal_logic": "c72df82993166fc1c9b3f145964b1b4791ce512c0d3f22919e9b46aaea17ef4b",
    "global_facts": "b80c9b31bc56727ebb3f1f980fbf40dbbd48565f609d1be9642ebe10a1c747a2",
    "high_school_biology": "4ffe58996b33947fae8f374124c20f95560b773cbd3c9cafea0a3e90bcf4140b",
    "high_school_chemistry": "42dcc80210a4cd861529e2cbaa04584d1d1cfd32d5515b385343df724d37408f",
    "high_school_computer_science": "3865e92ef308c42ad7d653301647c6cd5bfa6d67f20c9fbbdfe14c2c1eb5bbbc",
    "high_school_european_history": "696d4b82f27792ac04915a7f6822370b4a42133fcd83c9a13fe5d74aaba37fbb",
    "high_school_geography": "4c0c06e32b73ec3f5b55bdab2a124b3b9736e888d2edadc6f40d6172052f7507",
    "high_school_government_and_politics": "a3e20fbcff3bb0bdc613db7b56257c4e72d83d6e04e60db25c84e81d8c70a7d2",
    "high_school_macroeconomics": "a06fba67bf6b92e5174d049fdb484df8c6e663586a910e725e195ebf43116b9c",
    "high_school_mathematics": "56b119f139ba07c0e2a9616e60397e3415cdca1532ae217ac6d8fd1bddfc96f7",
    "high_school_microeconomics": "a6acbf0d864e51540e0c219e433dc0f54a56d8a35255bf294d4de8d09b7ef00d",
    "high_school_physics": "e5258c55a5e67a62c26fa0d2564b5263b69d38810e51204c59017789a771e253",
    "high_school_psychology": "c7aabf2ccfee7489bf1494cfa1504a679eb69e27caa7d64bd1e9e63cff5c3fe9",
    "high_school_statistics": "c305647bc50d6e049ab0d33e79a3455a964421a54023ba14fa6b3c72e19a8d1d",
    "high_school_us_history": "cd6c60e147dd70dde6b523c6ca0be07a78f7a1be7492278aa06641bc1f12680e",
    "high_school_world_history": "cb083c69f1a4efb316ea8645899872d2528d55a7bf7cad1d625fcf369db0e943",
    "human_aging": "ce44b96c0d5bb9f0491f34a6b30d8feb2e82092e5f094990a9632b67bf75277b",
    "human_sexuality": "98af8223edc66de68cfd9dfb18e19a65b94ad1559204f3f239ebb227112732f6",
    "international_law": "e4fb345f044b54ef01ddda7126b61c328202cf0160e8f27831f082cc63da8ed9",
    "jurisprudence": "26780d8e35636af29b00b26b808d43aa466d9c06fa7b27a9b4c753b335883286",
    "logical_fallacies": "f40e1e6098a69cd8511c009f024c7d7caaad4a2f7cb9501be5a377167a5def60",
    "machine_learning": "50d163266dbc8672b8097c32a4765ff4a5e8767ac4a8971e70ddccbd5b817bd3",
    "management": "423261b2633e20df5b4febfba4ecc7366917cdbabdb7e3ede4b1be98adf5dce5",
    "marketing": "1853316726e9fa72eba8d74a67fc45da9a2c7ed1cb892496359d87426a7f7c8a",
    "medical_genetics": "b330e63b2e60345285490ff495d5f4aea1981d738cc303c559903ec1c12238c1",
    "miscellaneous": "58f67b35c1890985ccdd1c6b4e9a4e8bfd4f8e0e5fadf5726860ae789c65d5e8",
    "moral_disputes": "2f3379380a469cbc2ed5d03372bae01306a19c65d053cc638435b92808b439f2",
    "moral_scenarios": "1776d1bf56388452ef80112bb1b5e94a6017abcb79b11540927e98f92cee8fba",
    "nutrition": "acb668e8064655eab8869d8cc65ebc40af39acfe6eb40e0e1a83dfb87bffdc2a",
    "philosophy": "74576271e2f9e3a01b4c437209323e833fb09a4e3a79217b16caa65e94ee8ba0",
    "prehistory": "5ff0349229f3bddf399ec0bf2c28c46a32d18997dd4bd93436702ba8bfccba78",
    "professional_accounting": "728c6030e2e2e882a73305279b149b34b44c8f0203bdf6c5c75d48602bfb883a",
    "professional_law": "59884277f245b8332d6d02ba16fdefd7ca5bdc7ed51dca5f19147094f087c28d",
    "professional_medicine": "3490aa679090fdfd94f1a887219f2a85bb4028f4d0e6d49d6242fb9a99b846a1",
    "professional_psychology": "5a3847f67470bff48c551dc80ac2a272a4378311d988ba5cad6325ba5d94e779",
    "public_relations": "6f12b33facda9e0ab191debe3fb638d86c61c66a6205ed333b0890815f53b9be",
    "security_studies": "df86d642637dcada2f62ccb793739d0d6384552616c11bb3941d201cf3ab4ef1",
    "sociology": "7ee6baaa0082e04a03a64a722ab50b495edb49c26306e850a49e26b1a4edc88d",
    "us_foreign_policy": "5fbff75d8a6f1bfa1e4ca696a2db9ffbf11e3b97809ab97c00c813b96bd27e08",
    "virology": "cfb95d550d800b600a1d802bdb4ab4b5018b168d74f87af5fdbea5b623d279c1",
    "world_religions": "203c71d35b4d667a4010b032ad57cc75a561209c94e2235eb5c549310bf23789",
}
GSM8K_TEST_SHA256 = "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14"
HUMANEVAL_SHA256 = "1d49078ba3e2b196b9344535bef34a43021f038fad9561d6ee7c53450609a6a2"
SQUAD_DEV_SHA256 = "95aa6a52d5d6a735563366753ca50492a658031da74f301ac5238b03966972c9"

BUNDLE = "eval_bundle/eval_data"


class EvalDataError(FileNotFoundError):
    """Evaluation data is missing and could not be fetched."""


# ---------------------------------------------------------------------------- checksums
def git_blob_id(path: str | os.PathLike) -> str:
    """Git's object id of a file's bytes: ``sha1(b"blob <size>\\0" + content)``."""
    path = Path(path)
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _matches(path: Path, sha256: str | None, blob: str | None, also: tuple = ()) -> bool:
    from ..data.download import sha256_file

    if sha256 is None and blob is None:
        return True
    digest = sha256_file(path)
    return digest == sha256 or digest in also or (blob is not None and git_blob_id(path) == blob)


# ---------------------------------------------------------------------------- the manifest
def manifest(which: str = "all") -> list[dict]:
    """Files of ``which`` (``core``, ``mmlu``, ``gsm8k``, ``humaneval``, ``squad``,
    ``chatcore`` = mmlu+gsm8k+humaneval, ``all``) as dicts: ``relpath`` (in the mirror
    layout), ``url``, ``sha256``, ``blob``, ``also`` (other accepted sha256), ``gunzip``."""
    groups = {"core": [], "mmlu": [], "gsm8k": [], "humaneval": [], "squad": []}
    for uri, (sha, blob) in CORE_FILES.items():
        also = (HELLASWAG_SUBSTITUTE_SHA256,) if uri.endswith("hellaswag.jsonl") else ()
        groups["core"].append(dict(relpath=f"{BUNDLE}/{uri}", url=LLM_FOUNDRY + uri,
                                   sha256=sha, blob=blob, also=also, gunzip=None))
    for subject, sha in MMLU_TEST.items():
        groups["mmlu"].append(dict(relpath=f"mmlu/test/{subject}_test.csv",
                                   url=f"{MMLU_BASE}{subject}_test.csv", sha256=sha,
                                   blob=None, also=(), gunzip=None))
    groups["gsm8k"].append(dict(relpath="gsm8k/test.jsonl", url=GSM8K_URL,
                                sha256=GSM8K_TEST_SHA256, blob=None, also=(), gunzip=None))
    groups["humaneval"].append(dict(relpath="humaneval/HumanEval.jsonl", url=HUMANEVAL_GZ_URL,
                                    sha256=HUMANEVAL_SHA256, blob=None, also=(),
                                    gunzip=HUMANEVAL_GZ_SHA256))
    groups["squad"].append(dict(relpath="squad/dev-v1.1.json", url=SQUAD_URL,
                                sha256=SQUAD_DEV_SHA256, blob=None, also=(), gunzip=None))
    names = {"chatcore": ["mmlu", "gsm8k", "humaneval"], "all": list(groups)}.get(which, [which])
    if any(n not in groups for n in names):
        raise ValueError(f"unknown data group {which!r}: use core, chatcore, mmlu, gsm8k, "
                         f"humaneval, squad or all")
    return [entry for n in names for entry in groups[n]]


def fetch_file(entry: dict, *, base_url: str | None = None, retries: int = 3,
               progress: bool = True) -> Path:
    """Download one manifest entry into ``<cache>/raw/<relpath>`` (unless already there).

    ``base_url``: a server laid out like the data mirror (``<base_url>/<relpath>``) instead
    of the upstream URL. Nothing is left behind on failure (no partial or unverified file).
    """
    from ..data.download import ChecksumError, download

    dest = paths.cache_dir("raw") / entry["relpath"]
    if dest.is_file() and _matches(dest, entry["sha256"], entry["blob"], entry["also"]):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.with_name(dest.name + ".unverified")
    if base_url is not None:
        url, gz = base_url.rstrip("/") + "/" + entry["relpath"], None
    else:
        url, gz = entry["url"], entry["gunzip"]
    try:
        if gz:
            packed = dest.with_name(dest.name + ".gz")
            download(url, packed, sha256=gz, retries=retries, progress=progress)
            with gzip.open(packed, "rb") as src, open(staging, "wb") as dst:
                shutil.copyfileobj(src, dst)
            packed.unlink()
        else:
            download(url, staging, retries=retries, progress=progress)
        if not _matches(staging, entry["sha256"], entry["blob"], entry["also"]):
            want = entry["sha256"] or f"git blob {entry['blob']}"
            raise ChecksumError(f"{url}: checksum mismatch (expected {want}); the file was "
                                f"deleted. Run the same command again, or check the source")
        os.replace(staging, dest)
    finally:
        staging.unlink(missing_ok=True)
    return dest


def fetch(which: str = "all", *, base_url: str | None = None, progress: bool = True,
          skip_present: bool = True) -> list[Path]:
    """Fetch every file of ``which`` that neither the mirror nor the cache already has."""
    out = []
    for entry in manifest(which):
        found = paths.find_raw(entry["relpath"]) if skip_present else None
        out.append(found if found is not None else
                   fetch_file(entry, base_url=base_url, progress=progress))
    return out


# ---------------------------------------------------------------------------- lookups
def find(relpath: str) -> Path | None:
    """A raw evaluation file in the mirror or the cache, or None."""
    return paths.find_raw(relpath)


def require(relpath: str, what: str, group: str) -> Path:
    path = find(relpath)
    if path is None:
        raise EvalDataError(
            f"{what} not found (looked for {relpath} in $NANOGPT_COURSE_DATA and "
            f"{paths.cache_dir('raw', create=False)}). To fix: run `python -m "
            f"nanogpt_course.eval download {group}` (needs internet), or point "
            f"NANOGPT_COURSE_DATA at a data mirror")
    return path


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ---------------------------------------------------------------------------- SQuAD
SQUAD_CONVERSION = 1


def squad_rows(dev: dict) -> list[dict]:
    """SQuAD v1.1 dev -> CORE language-modelling rows, in file order (10,570 for dev).

    ``{"context": "Context: <paragraph>\\nQuestion: <question>\\nAnswer:",
    "continuation": <the first gold answer>}``: the layout of the CORE bundle's squad.jsonl
    as public reconstructions and rendered prompts show it (not checked against that file).
    """
    rows = []
    for article in dev["data"]:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                rows.append({"context": f"Context: {para['context']}\nQuestion: "
                                        f"{qa['question']}\nAnswer:",
                             "continuation": qa["answers"][0]["text"]})
    return rows


def converted_squad() -> Path | None:
    """The CORE squad task built from ``squad/dev-v1.1.json`` (cached), or None without it."""
    source = find("squad/dev-v1.1.json")
    if source is None:
        return None
    dest = paths.cache_dir("eval") / f"squad-from-dev-v1.1-v{SQUAD_CONVERSION}.jsonl"
    if not dest.is_file():
        rows = squad_rows(json.loads(source.read_text(encoding="utf-8")))
        tmp = dest.with_name(dest.name + f".{os.getpid()}.tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                       encoding="utf-8")
        os.replace(tmp, dest)
    return dest
