"""The sentencepiece tokenizer: training it from a stream of lines, loading it, and encoding text.

Special ids are fixed for every lmcli tokenizer: 0 = <pad>, 1 = <unk>, 2 = <s> (bos), 3 = </s> (eos).

Id order (checked with sentencepiece 0.2.3): ids 4.. are sorted by decreasing piece score. For `word` and
`char` models the score is the log frequency, so ids follow corpus frequency; for `unigram` it is the
piece's log-probability under the trained unigram LM, which tracks how often encoding uses the piece (rank
correlation ~1 on a Zipfian test corpus; characters kept only for coverage get scores near the minimum).
For `bpe` the score is minus the merge rank, and the single characters come last although they are
frequent, so ids are NOT frequency-ordered (rank correlation ~0.1, and intermediate merges are never
emitted). A log-uniform (Zipf) sampler over ids thus suits word/char/unigram but not bpe; the exact
train-split counts are in the manifest (`DataDir.unigram_counts`) when real frequencies are needed.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Optional

import sentencepiece as spm

from lmcli.config import VOCAB_MAX, PrepareConfig
from lmcli.runtime.errors import ConfigError, InputError, LmcliError, RunDirError

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SPECIAL_PIECES = {"pad": "<pad>", "unk": "<unk>", "bos": "<s>", "eos": "</s>"}
_MAX_SENTENCE_BYTES = 4192  # sentencepiece's default max_sentence_length, kept
_SOFT_LIMIT = 1 << 24  # --vocab-size max: sentencepiece stops at what the corpus supports (hard_vocab_limit off)
_MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}  # TrainerSpec.ModelType values


class Tokenizer:
    """A loaded sentencepiece model with lmcli's fixed special ids.

    Attributes:
        serialized: the model proto bytes (what `tokenizer.model` holds).
        path: the file it was loaded from, or None for an in-memory model.
        sha256: hex digest of `serialized`.
    """

    def __init__(self, serialized: bytes, path: Optional[Path] = None) -> None:
        """Wrap model proto bytes. Raises ValueError if they are not a sentencepiece model."""
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=serialized)
        except (RuntimeError, OSError, TypeError) as e:
            raise ValueError(f"not a sentencepiece model ({_short(e)})") from None
        self.serialized = bytes(serialized)
        self.path = None if path is None else Path(path)
        self.sha256 = hashlib.sha256(self.serialized).hexdigest()

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Load a `.model` file.

        Raises:
            RunDirError: the file is missing, unreadable or not a sentencepiece model.
        """
        try:
            return cls(Path(path).read_bytes(), Path(path))
        except OSError as e:
            raise RunDirError(f"cannot read tokenizer {path}: {e.strerror or e}") from None
        except ValueError as e:
            raise RunDirError(f"{path}: {e}") from None

    @property
    def vocab_size(self) -> int:
        return int(self._sp.get_piece_size())

    @property
    def pad_id(self) -> int:
        return int(self._sp.pad_id())

    @property
    def unk_id(self) -> int:
        return int(self._sp.unk_id())

    @property
    def bos_id(self) -> int:
        return int(self._sp.bos_id())

    @property
    def eos_id(self) -> int:
        return int(self._sp.eos_id())

    @property
    def model_type(self) -> str:
        """unigram | bpe | word | char ("unknown" if the model proto cannot be parsed here)."""
        try:
            from sentencepiece import sentencepiece_model_pb2 as pb
        except ImportError:  # pragma: no cover - protobuf missing
            return "unknown"
        proto = pb.ModelProto()
        proto.ParseFromString(self.serialized)
        return _MODEL_TYPES.get(int(proto.trainer_spec.model_type), "unknown")

    def encode(self, text: str) -> list[int]:
        """Piece ids of one line (no bos/eos added)."""
        return list(self._sp.encode(text, out_type=int))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Piece ids of several lines at once (sentencepiece encodes them in parallel)."""
        return [list(ids) for ids in self._sp.encode(list(texts), out_type=int)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of a sequence of ids (accepts numpy arrays); special ids decode to ''."""
        return str(self._sp.decode([int(i) for i in ids]))

    def id_to_piece(self, i: int) -> str:
        return str(self._sp.id_to_piece(int(i)))

    def special_ids(self) -> dict[str, int]:
        """{"pad": .., "unk": .., "bos": .., "eos": ..} as this model defines them."""
        return {"pad": self.pad_id, "unk": self.unk_id, "bos": self.bos_id, "eos": self.eos_id}


def reuse_tokenizer(path: str) -> Tokenizer:
    """Load `--tokenizer PATH` and check that it uses lmcli's special ids.

    Raises:
        ConfigError: unreadable, not a sentencepiece model, or special ids other than 0/1/2/3.
    """
    try:
        tok = Tokenizer(Path(path).read_bytes(), Path(path))
    except OSError as e:
        raise ConfigError(f"--tokenizer {path}: cannot read it: {e.strerror or e}") from None
    except ValueError as e:
        raise ConfigError(f"--tokenizer {path}: {e}") from None
    expected = {"pad": PAD_ID, "unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID}
    have = tok.special_ids()
    if have != expected:
        wrong = ", ".join(f"{k}_id={have[k]} (need {v})" for k, v in expected.items() if have[k] != v)
        raise ConfigError(
            f"--tokenizer {path}: special ids must be pad=0 unk=1 bos=2 eos=3, but it has {wrong} "
            "(-1 = missing); train it with --pad_id=0 --unk_id=1 --bos_id=2 --eos_id=3 "
            "or let prepare train one"
        )
    return tok


def train_tokenizer(lines: Iterable[str], cfg: PrepareConfig) -> bytes:
    """Train a sentencepiece model on streamed lines; returns the serialized model (no files written).

    Exceptions raised by `lines` (e.g. InputError, KeyboardInterrupt) propagate unchanged.

    Raises:
        ConfigError: sentencepiece rejects the options for this corpus (e.g. vocabulary too large).
    """
    every = cfg.vocab_size == VOCAB_MAX  # as many pieces as the corpus allows: a soft limit far above any corpus
    if not every and cfg.vocab_size <= len(SPECIAL_PIECES):
        raise ConfigError(f"--vocab-size must be larger than the {len(SPECIAL_PIECES)} special pieces, "
                          f"got {cfg.vocab_size}")
    holder: list[BaseException] = []
    writer = io.BytesIO()
    spm.set_random_generator_seed(cfg.seed & 0xFFFFFFFF)  # this sentencepiece has no random_seed option
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_capture(lines, holder), model_writer=writer,
            vocab_size=_SOFT_LIMIT if every else cfg.vocab_size, hard_vocab_limit=not every,
            model_type=cfg.model_type,
            character_coverage=cfg.character_coverage,
            input_sentence_size=cfg.max_sentences, shuffle_input_sentence=True,
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
            pad_piece=SPECIAL_PIECES["pad"], unk_piece=SPECIAL_PIECES["unk"],
            bos_piece=SPECIAL_PIECES["bos"], eos_piece=SPECIAL_PIECES["eos"],
            max_sentence_length=_MAX_SENTENCE_BYTES,
            minloglevel=2,  # errors only: sentencepiece logs every step at INFO
        )
    except RuntimeError as e:
        if holder:
            raise holder[0] from None
        raise _training_error(str(e), cfg) from None
    if holder:  # pragma: no cover - sentencepiece always fails on an iterator error
        raise holder[0]
    return writer.getvalue()


def _capture(lines: Iterable[str], holder: list[BaseException]) -> Iterator[str]:
    """Yield `lines`, keeping any exception they raise (sentencepiece would turn it into a RuntimeError)."""
    try:
        yield from lines
    except BaseException as e:  # noqa: BLE001 - re-raised by train_tokenizer
        holder.append(e)
        raise


def _training_error(message: str, cfg: PrepareConfig) -> LmcliError:
    if "sentences_.empty()" in message:  # every line was over sentencepiece's max_sentence_length
        return InputError(f"no train line is short enough to train the tokenizer (sentencepiece skips lines "
                          f"over {_MAX_SENTENCE_BYTES} bytes)")
    flags = f"--vocab-size {cfg.vocab_size}"
    kind = f"--model-type {cfg.model_type}"
    if "too high" in message or "too big" in message:
        m = re.search(r"<=\s*(\d+)", message)
        limit = f" (at most {m.group(1)} for {kind})" if m else f" for {kind}"
        return ConfigError(f"{flags} is larger than this corpus supports{limit}")
    m = re.search(r"smaller than required_chars\.\s*\d+\s*vs\s*(\d+)", message)
    if m:
        return ConfigError(
            f"{flags} is too small for this corpus: it needs at least {m.group(1)} pieces for its characters "
            f"and the specials; raise --vocab-size or lower --character-coverage ({cfg.character_coverage})"
        )
    return ConfigError(f"sentencepiece cannot train a tokenizer with {flags} {kind}: {_short(message)}")


def _short(e: object) -> str:
    """sentencepiece messages start with 'INTERNAL: src/file.cc(123) [condition] '; keep the rest."""
    full = str(e).strip()
    text = re.sub(r"^[A-Z_]+:\s*", "", full)
    text = re.sub(r"^src/\S+\(\d+\)\s*(\[.*?\]\s*)?", "", text)
    return (text or full or "unknown error").splitlines()[0]
