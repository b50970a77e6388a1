"""Rebuild ``sample_corpus.csv`` from NLTK's ``state_union.zip`` (see README.md beside this file).

    python experiments/data/make_sample_corpus.py path/to/state_union.zip experiments/data/sample_corpus.csv

One CSV row per non-empty paragraph of each address, in file order, with the columns ``speech``,
``year``, ``president``, ``paragraph`` and ``transcript``. Files that are not UTF-8 in the source are
Windows-1252 and are re-encoded; nothing else about the text is changed.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import zipfile
from pathlib import Path

SOURCE_SHA256 = "366c1dc82b2abf896f42b2ec50ba802a0141a29f75d29ca48a7a243ce5bfbe8d"


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("zip_file", help="state_union.zip from github.com/nltk/nltk_data packages/corpora/")
    parser.add_argument("out_csv", help="CSV to write")
    args = parser.parse_args()

    digest = hashlib.sha256(Path(args.zip_file).read_bytes()).hexdigest()
    if digest != SOURCE_SHA256:
        print(f"warning: {args.zip_file} has sha256 {digest}, not the recorded {SOURCE_SHA256}")
    rows = 0
    with zipfile.ZipFile(args.zip_file) as zf, open(args.out_csv, "w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["speech", "year", "president", "paragraph", "transcript"])
        names = sorted(n for n in zf.namelist() if n.endswith(".txt"))
        for name in names:
            stem = Path(name).stem  # e.g. 1945-Truman, 1961-Kennedy
            year, _, president = stem.partition("-")
            president = president.split("-")[0]  # 1965-Johnson-1: two addresses that year
            paragraphs = [" ".join(line.split()) for line in _decode(zf.read(name)).splitlines()]
            for i, text in enumerate(p for p in paragraphs if p):
                writer.writerow([stem, year[:4], president, i, text])
                rows += 1
    print(f"wrote {rows} rows from {len(names)} addresses to {args.out_csv}")


if __name__ == "__main__":
    main()
