"""Penn Treebank, word level (Mikolov's ``ptb.{train,valid,test}.txt``), as token streams on the device.

Every line ends with an ``<eos>`` token and the vocabulary comes from the training file (10,000
words for PTB, ``<eos>`` included), as in Zaremba et al. and the TensorFlow tutorial. Batches
follow truncated backpropagation through time: a split is one stream of tokens, cut into
``batch`` rows that are read left to right in consecutive chunks of ``steps`` tokens, so a
model that carries its hidden state from one chunk to the next sees each row as one long text.
"""

from __future__ import annotations

import gzip
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from sparsebench.errors import DataError

SUBDIR = "ptb"
SPLITS = ("train", "valid", "test")
EOS = "<eos>"
UNK = "<unk>"


def file_stem(split: str) -> str:
    return f"ptb.{split}.txt"


def find_file(root: Path, split: str) -> Path | None:
    for candidate in (root / SUBDIR / file_stem(split), root / SUBDIR / f"{file_stem(split)}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_words(path: Path) -> list[str]:
    """Whitespace tokens of a text file with ``<eos>`` at every line end (gzipped or not)."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        text = raw.decode("utf-8")
    except (OSError, EOFError, gzip.BadGzipFile, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is corrupt ({exc}); replace it with the original PTB file") from exc
    return text.replace("\n", f" {EOS} ").split()


def build_vocabulary(words: list[str]) -> dict[str, int]:
    """Word -> id, most frequent first and ties alphabetical, so ids do not depend on dict order."""
    counts = Counter(words)
    ordered = sorted(counts, key=lambda word: (-counts[word], word))
    return {word: i for i, word in enumerate(ordered)}


def encode(words: list[str], vocabulary: dict[str, int], source: Path) -> torch.Tensor:
    """Token ids; a word outside the vocabulary becomes ``<unk>`` where the vocabulary has one."""
    unk = vocabulary.get(UNK)
    ids = []
    for word in words:
        index = vocabulary.get(word, unk)
        if index is None:
            raise DataError(
                f"{source} has the word {word!r}, which the training file never uses and the vocabulary "
                f"has no {UNK}; use the standard PTB files"
            )
        ids.append(index)
    return torch.tensor(ids, dtype=torch.int64)


@dataclass
class Corpus:
    vocabulary: dict[str, int]
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor


def missing_message(root: Path) -> str:
    names = ", ".join(f"{file_stem(s)}[.gz]" for s in SPLITS)
    return (
        f"PTB not found in {root / SUBDIR} (expected {names}); put Mikolov's files there, or point "
        f"--data-dir or SPARSEBENCH_DATA at a folder with a {SUBDIR}/ subfolder"
    )


def load_ptb(root: Path) -> Corpus:
    """Read the three splits from ``root/ptb`` and encode them with the training vocabulary."""
    paths = {split: find_file(root, split) for split in SPLITS}
    if any(p is None for p in paths.values()):
        raise DataError(missing_message(root))
    words = {split: read_words(path) for split, path in paths.items()}
    for split, tokens in words.items():
        if len(tokens) < 2:
            raise DataError(f"{paths[split]} has {len(tokens)} tokens; a language model needs at least two")
    vocabulary = build_vocabulary(words["train"])
    ids = {split: encode(tokens, vocabulary, paths[split]) for split, tokens in words.items()}
    return Corpus(vocabulary, ids["train"], ids["valid"], ids["test"])


class TokenBatches:
    """One split as a token stream for truncated BPTT; every target token is scored exactly once.

    With ``batch`` rows, the stream's first ``batch * L`` inputs (L = (T - 1) // batch) become a
    (batch, L) matrix read in chunks of ``steps`` columns, targets shifted by one token. Without
    ``drop_last`` the last partial chunk comes too, then the up to ``batch - 1`` leftover tokens as
    one row: they follow the last row in the stream, so a model continues them from that row's
    state (see ``tasks/ptb_lstm.py``). ``num_examples`` is T - 1, the number of target tokens, which
    is the N of the ELBO for a language model.
    """

    def __init__(self, tokens: torch.Tensor, steps: int) -> None:
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        self.tokens = tokens
        self.steps = steps
        self.num_examples = len(tokens) - 1

    def _layout(self, batch_size: int) -> tuple[int, int]:
        """(columns per row, leftover tokens) of the stream cut into ``batch_size`` rows."""
        columns = self.num_examples // batch_size
        return columns, self.num_examples - columns * batch_size

    def num_batches(self, batch_size: int, drop_last: bool) -> int:
        columns, leftover = self._layout(batch_size)
        if drop_last:
            return columns // self.steps
        return -(-columns // self.steps) + -(-leftover // self.steps)

    def iterate(
        self, batch_size: int, shuffle: bool, generator: torch.Generator | None, drop_last: bool
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(inputs, targets), each (rows, steps); ``shuffle`` is ignored because order is the signal."""
        columns, leftover = self._layout(batch_size)
        used = columns * batch_size
        inputs = self.tokens[:used].view(batch_size, columns)
        targets = self.tokens[1 : used + 1].view(batch_size, columns)
        stop = columns - columns % self.steps if drop_last else columns
        for start in range(0, stop, self.steps):
            yield inputs[:, start : start + self.steps], targets[:, start : start + self.steps]
        if drop_last:
            return
        for start in range(used, used + leftover, self.steps):
            end = min(start + self.steps, used + leftover)
            yield self.tokens[start:end].view(1, -1), self.tokens[start + 1 : end + 1].view(1, -1)
