"""Hugging Face datasets on disk, without ``datasets``: which files hold a split.

``PATH[:SPLIT]`` is either what ``Dataset.save_to_disk`` wrote (``state.json`` naming Arrow IPC
files, beside ``dataset_info.json``), what ``DatasetDict.save_to_disk`` wrote (``dataset_dict.json``
and one such folder per split), or a local dataset folder as ``load_dataset(PATH)`` reads it (JSON
Lines, Parquet, CSV, Arrow or text files, assigned to splits by the Hub's file-name conventions:
``train.jsonl``, ``data/test-00000-of-00001.parquet``, ``validation/…``; files that name no split
are all ``train``). The split defaults to ``train``. Nothing is downloaded and no dataset script
is run; the files are then read by the ordinary file readers (:mod:`elmojax.data.readers`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from elmojax.data.compression import inner_suffix
from elmojax.errors import ElmoError

#: the Hub's split names and the words that name them in file and folder names, in its order
SPLIT_WORDS = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "dev", "val"),
    "test": ("test", "testing", "eval", "evaluation"),
}
#: suffixes of a local dataset folder's data files (after any compression suffix)
DATA_SUFFIXES = (".jsonl", ".json", ".ndjson", ".parquet", ".arrow", ".csv", ".tsv", ".txt")
_SEP = r"[-._ 0-9]"


def parse_spec(spec: str) -> tuple[Path, str | None]:
    """``PATH[:SPLIT]`` -> (path, split or None); a path that exists as given keeps its colons."""
    path, colon, split = spec.rpartition(":")
    if not colon or Path(spec).exists() or not re.fullmatch(r"[\w.-]+", split):
        return Path(spec), None
    return Path(path), split


def _json(path: Path, spec: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ElmoError(f"`hf_dataset` {spec}: {path} is unreadable ({e}); save the dataset again") from None


def _saved_files(directory: Path, split: str | None, spec: str) -> list[Path]:
    """The Arrow files of a ``Dataset.save_to_disk`` folder."""
    state = _json(directory / "state.json", spec)
    saved_split = state.get("_split")
    if split is not None and saved_split is not None and split != saved_split:
        raise ElmoError(f"`hf_dataset` {spec}: this folder holds the {saved_split!r} split only")
    try:
        files = [directory / f["filename"] for f in state["_data_files"]]
    except (KeyError, TypeError):
        raise ElmoError(
            f"`hf_dataset` {spec}: {directory / 'state.json'} lists no data files (_data_files); "
            "save the dataset again with save_to_disk"
        ) from None
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise ElmoError(f"`hf_dataset` {spec}: {directory} lacks {', '.join(missing)}; copy the whole folder")
    return files


def split_of(relative: Path) -> str | None:
    """The split a data file belongs to by the Hub's naming conventions, or None."""
    for split, words in SPLIT_WORDS.items():
        for word in words:
            pattern = re.compile(rf"(^|{_SEP}){word}($|{_SEP})", re.IGNORECASE)
            if any(pattern.search(part) for part in relative.parts):
                return split
    return None


def _local_files(directory: Path, split: str | None, spec: str) -> list[Path]:
    """The data files of a split of a local dataset folder, in sorted order."""
    scripts = sorted(p.name for p in directory.glob("*.py"))
    files = sorted(
        p
        for p in directory.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(directory).parts)
        and inner_suffix(p) in DATA_SUFFIXES
    )
    if not files:
        what = f" (only the dataset script {scripts[0]}, which elmojax does not run)" if scripts else ""
        raise ElmoError(
            f"`hf_dataset` {spec}: no data files found{what}; give a folder written by save_to_disk or "
            f"one holding {', '.join(DATA_SUFFIXES)} files"
        )
    splits: dict[str, list[Path]] = {}
    for f in files:
        named = split_of(f.relative_to(directory))
        if named is not None:
            splits.setdefault(named, []).append(f)
    if not splits:
        splits = {"train": files}
    split = split or "train"
    if split not in splits:
        raise ElmoError(f"`hf_dataset` {spec}: no split {split!r}; splits found: {', '.join(sorted(splits))}")
    return splits[split]


def dataset_files(spec: str) -> list[Path]:
    """The files holding the split ``spec`` (``PATH[:SPLIT]``) names, in the dataset's order."""
    directory, split = parse_spec(spec)
    if not directory.is_dir():
        raise ElmoError(
            f"`hf_dataset` {spec}: {directory} is not a folder; give the folder save_to_disk wrote or a "
            "local dataset folder (nothing is downloaded)"
        )
    if (directory / "dataset_dict.json").is_file():
        splits = _json(directory / "dataset_dict.json", spec).get("splits", [])
        chosen = split or "train"
        if chosen not in splits:
            raise ElmoError(
                f"`hf_dataset` {spec}: no split {chosen!r}; splits found: {', '.join(splits) or 'none'}"
            )
        return _saved_files(directory / chosen, None, spec)
    if (directory / "state.json").is_file():
        return _saved_files(directory, split, spec)
    return _local_files(directory, split, spec)
