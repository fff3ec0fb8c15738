"""Text corpora as lists of files, split into train and validation by whole file.

A split by file (not by position inside one stream) keeps a validation file's text out of training
entirely. Which files go to validation is decided by a hash of each file's relative path, so the
split is the same on every machine and does not move when files are added elsewhere.

Built in, no download: `stdlib_corpus()` = the running interpreter's standard library sources.
Loaders for the real corpora of DATA.md (they live in OS packages) say which package to install.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import os
import shutil
import subprocess
import sysconfig
from dataclasses import dataclass, field

from ssmkit._files import write_bytes_atomic

SKIP_DIRS = {"test", "tests", "site-packages", "dist-packages", "__pycache__", "idle_test"}


@dataclass
class TextCorpus:
    """Files of a corpus split by file; `fingerprint` hashes the file list and contents."""

    name: str
    train_files: list[str]
    val_files: list[str]
    fingerprint: str
    info: dict = field(default_factory=dict)

    @property
    def n_bytes(self) -> dict[str, int]:
        return {
            "train": sum(os.path.getsize(f) for f in self.train_files),
            "val": sum(os.path.getsize(f) for f in self.val_files),
        }


def _is_val(relpath: str, val_fraction: float) -> bool:
    h = int.from_bytes(hashlib.sha256(relpath.encode()).digest()[:8], "big")
    return (h % 1_000_000) < val_fraction * 1_000_000


def split_files(files: list[str], root: str | None, name: str, val_fraction: float = 0.05) -> TextCorpus:
    """Sort `files`, hash their relative paths and contents, and split them by file."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    files = sorted(set(files))
    if len(files) < 2:
        raise ValueError(f"corpus {name!r} needs at least 2 files to split by file, found {len(files)}")
    digest = hashlib.sha256()
    train, val = [], []
    for f in files:
        rel = os.path.relpath(f, root) if root else os.path.basename(f)
        digest.update(rel.encode() + b"\0")
        with open(f, "rb") as fh:
            digest.update(hashlib.sha256(fh.read()).digest())
        (val if _is_val(rel, val_fraction) else train).append(f)
    if not val:  # tiny corpora: the last file validates
        val.append(train.pop())
    if not train:
        train.append(val.pop(0))
    return TextCorpus(name, train, val, digest.hexdigest()[:16], {"root": root, "n_files": len(files)})


def stdlib_corpus(val_fraction: float = 0.05) -> TextCorpus:
    """The running interpreter's standard library *.py files, without test/ and site-packages/."""
    root = sysconfig.get_paths()["stdlib"]
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        files += [os.path.join(dirpath, f) for f in filenames if f.endswith(".py")]
    if len(files) < 2:
        raise FileNotFoundError(f"no Python standard library sources under {root}")
    corpus = split_files(files, root, "stdlib", val_fraction)
    corpus.info["python"] = sysconfig.get_python_version()
    return corpus


def files_corpus(paths: str | list[str], val_fraction: float = 0.05, name: str = "files") -> TextCorpus:
    """Files, directories (every file below, recursively) and glob patterns."""
    if isinstance(paths, str):
        paths = [paths]
    files: list[str] = []
    for p in paths:
        p = os.path.expanduser(p)
        if os.path.isdir(p):
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                files += [os.path.join(dirpath, f) for f in filenames if not f.startswith(".")]
        elif os.path.isfile(p):
            files.append(p)
        else:
            matched = [m for m in glob.glob(p, recursive=True) if os.path.isfile(m)]
            if not matched:
                raise FileNotFoundError(f"corpus path {p!r} matches no file")
            files += matched
    root = os.path.commonpath([os.path.abspath(f) for f in files]) if len(files) > 1 else None
    return split_files([os.path.abspath(f) for f in files], root, name, val_fraction)


DUMPED = ".complete"  # written last into a corpus dumped as files: the dump is whole


def _chunk_to_files(text: str, out_dir: str, lines_per_file: int) -> list[str]:
    """Write `text` as numbered files of `lines_per_file` lines (so a single stream splits by file),
    each atomically, then the DUMPED marker: a dump cut short by a kill is redone, not used."""
    lines = text.splitlines(keepends=True)
    paths = []
    for i in range(0, len(lines), lines_per_file):
        path = os.path.join(out_dir, f"part{i // lines_per_file:05d}.txt")
        write_bytes_atomic(path, "".join(lines[i : i + lines_per_file]).encode("utf-8"))
        paths.append(path)
    write_bytes_atomic(os.path.join(out_dir, DUMPED), b"")
    return paths


def _dumped(out_dir: str) -> bool:
    return os.path.isfile(os.path.join(out_dir, DUMPED))


def kjv_corpus(cache_dir: str, val_fraction: float = 0.05) -> TextCorpus:
    """The King James Bible, dumped by the `bible` command of Debian's bible-kjv package."""
    exe = shutil.which("bible")
    if exe is None:
        raise ImportError("the KJV corpus needs the `bible` command: apt-get install bible-kjv")
    out_dir = os.path.join(cache_dir, "kjv")
    if not _dumped(out_dir):
        text = subprocess.run(
            [exe, "-l", "100000", "gen1:1-rev22:21"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        _chunk_to_files(text, out_dir, lines_per_file=1000)
    return files_corpus(out_dir, val_fraction, name="kjv")


def python_docs_corpus(val_fraction: float = 0.05) -> TextCorpus:
    """The Python documentation sources (reStructuredText) of Debian's python3.X-doc package."""
    files = glob.glob("/usr/share/doc/python3*/html/_sources/**/*.rst.txt", recursive=True)
    if not files:
        raise ImportError("the Python docs corpus needs the docs package: apt-get install python3.11-doc")
    return split_files(files, os.path.commonpath(files), "python-docs", val_fraction)


DNA_FILES = (
    "/usr/share/doc/bowtie/examples/genomes/NC_008253.fna.gz",  # E. coli 536, 4.9 Mbp
    "/usr/share/doc/bowtie2/examples/reference/lambda_virus.fa.gz",  # phage lambda, 48.5 kbp
)


def dna_corpus(cache_dir: str, path: str | None = None, val_fraction: float = 0.05) -> TextCorpus:
    """A genome from a FASTA(.gz) file, headers removed, one line of bases per 1,000-line file part."""
    candidates = [path] if path else list(DNA_FILES)
    found = next((p for p in candidates if p and os.path.isfile(p)), None)
    if found is None:
        raise ImportError(
            "the DNA corpus needs a genome: apt-get install bowtie-examples (or bowtie2-examples)"
        )
    out_dir = os.path.join(cache_dir, "dna-" + os.path.basename(found).split(".")[0])
    if not _dumped(out_dir):
        opener = gzip.open if found.endswith(".gz") else open
        with opener(found, "rt") as f:
            seq = "".join(line for line in f if not line.startswith(">"))
        _chunk_to_files(seq, out_dir, lines_per_file=1000)
    return files_corpus(out_dir, val_fraction, name="dna")


CORPORA = ("stdlib", "kjv", "python-docs", "dna")  # the corpora known by name


def get_corpus(name: str, cache_dir: str = ".ssmkit_cache", val_fraction: float = 0.05) -> TextCorpus:
    """By name: "stdlib" (default, built in), "kjv", "python-docs", "dna", or a path / glob of files."""
    if name == "stdlib":
        return stdlib_corpus(val_fraction)
    if name == "kjv":
        return kjv_corpus(cache_dir, val_fraction)
    if name == "python-docs":
        return python_docs_corpus(val_fraction)
    if name == "dna":
        return dna_corpus(cache_dir, val_fraction=val_fraction)
    try:
        return files_corpus(name, val_fraction)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"corpus {name!r} is neither a corpus name ({', '.join(CORPORA)}) nor files: {e}"
        ) from None
