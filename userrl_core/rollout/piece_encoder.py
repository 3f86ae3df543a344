"""Byte-level BPE encoding of plain ASCII text with a cache of pre-tokenised pieces.

Why: every episode-turn tokenises the simulator's reply (about 100 characters) with the Rust
tokenizer, and about 90% of that call is the pre-tokenizer's regular expression, not BPE.
Byte-level BPE tokenizers (GPT-2, SmolLM, Qwen, Llama 3) split text in three stages that are
each independent of the rest of the text: added tokens first, then a regular expression cuts the
text between them into pieces, then BPE encodes every piece on its own. The same pieces
(``" the"``, ``" budget"``, ``","``) come back all the time, so their ids are cached, and the
splitting runs as Python's ``re`` on an ASCII translation of the tokenizer's own expression
(for ASCII text, ``\\p{L}`` is ``[A-Za-z]`` and ``\\p{N}`` is ``[0-9]``).

:meth:`PieceEncoder.for_tokenizer` builds one only for a tokenizer whose pipeline it understands
(read from the tokenizer's own JSON) and only if it gives exactly the tokenizer's ids on probe
texts; :meth:`PieceEncoder.encode` answers None for text it does not handle (anything but
printable ASCII, tabs and newlines), which the caller then encodes the ordinary way.

The other way round, :meth:`PieceEncoder.decode` joins a cached text per id for ids whose
bytes are all ASCII (for those, the byte-level decoder's output is just their concatenation)
and answers None when any id is not such a token, for the tokenizer's own decode.
"""

from __future__ import annotations

import json
import re
from typing import Any

_CACHE_LIMIT = 200_000
# ASCII members of the Unicode categories tokenizer expressions use; an empty string: none.
_ASCII_CATEGORIES = {
    "L": "A-Za-z", "Lu": "A-Z", "Ll": "a-z", "Lt": "", "Lm": "", "Lo": "",
    "N": "0-9", "Nd": "0-9", "Nl": "", "No": "", "M": "", "Mn": "", "Mc": "", "Me": "",
}
_PASSIVE_NORMALIZERS = {"NFC", "NFD", "NFKC", "NFKD"}  # the identity on ASCII text
# GPT-2's expression, which the ByteLevel pre-tokenizer applies when ``use_regex`` is set
_BYTE_LEVEL_EXPRESSION = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_OUTSIDE = re.compile(r"[^\t\n\r\x20-\x7e]")  # what encode() leaves to the tokenizer
_PROBES = [
    "Hello world! It's 3:45pm, isn't it?  Two  spaces,\ttab\nnew line\n\n\nthree; (x+y)*2 == 42...",
    "I'd like to go in May, maybe the 3rd to the 5th; budget: ~$800 (USD) for 2 people!!",
    "<|im_start|>user\nWhat's up?<|im_end|>\n<|im_start|>assistant\n  indented\r\nCRLF line  ",
    "{\"covered_detail_indices\": [0, 2], \"is_task_related\": true}  \n\n  trailing  \t",
    "URLs like https://example.com/a_b?c=1&d=2 and e-mail a.b@c.org; 1234567 12,345.678 0x1F",
    "   leading spaces, 'quoted' and \"double\" words, WE'RE CAPS'LL'VE, it's, they'd",
]


def ascii_expression(expression: str) -> str | None:
    """``expression`` for Python's ``re`` applied to ASCII text: each ``\\p{..}`` replaced by
    its ASCII members; None when it uses something this translation does not know."""
    out: list[str] = []
    in_class = False
    class_start = 0
    i = 0
    while i < len(expression):
        char = expression[i]
        if char == "\\":
            if expression.startswith("\\p{", i):
                end = expression.find("}", i)
                members = _ASCII_CATEGORIES.get(expression[i + 3:end]) if end > 0 else None
                if members is None:
                    return None
                out.append(members if in_class else (f"[{members}]" if members else "(?!)"))
                i = end + 1
                continue
            if expression.startswith("\\P", i):
                return None
            out.append(expression[i:i + 2])
            i += 2
            continue
        if char == "[":
            if in_class:
                return None  # a nested class: set operations Python's re does not have
            in_class, class_start = True, len(out) + 1
            if expression.startswith("[^", i):
                out.append("[^")
                class_start += 1
                i += 2
                continue
        elif char == "]" and in_class and len(out) > class_start:
            in_class = False
        elif char == "&" and in_class and expression.startswith("&&", i):
            return None
        out.append(char)
        i += 1
    return None if in_class else "".join(out)


def byte_level_alphabet() -> dict[int, str]:
    """The byte-to-character table of byte-level BPE: printable Latin-1 bytes stand for
    themselves, every other byte for the next character from U+0100 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class PieceEncoder:
    """Encodes printable ASCII text exactly as one byte-level BPE tokenizer does (without
    special tokens added), caching the ids of every piece it has seen."""

    def __init__(self, backend: Any, splitter: re.Pattern[str], added: dict[str, int]) -> None:
        self._model = backend.model
        self._splitter = splitter
        self._added = added
        self._added_split = (re.compile("(" + "|".join(re.escape(t) for t in sorted(added, key=len, reverse=True)) + ")")
                             if added else None)
        self._alphabet = str.maketrans({chr(b): c for b, c in byte_level_alphabet().items() if b < 128})
        self._pieces: dict[str, list[int]] = {}
        self._ascii: list[str | None] = []  # id -> its text when all its bytes are ASCII (decode)

    @classmethod
    def for_tokenizer(cls, backend: Any) -> "PieceEncoder | None":
        """An encoder for ``backend`` (a ``tokenizers.Tokenizer``), or None when its pipeline is
        not byte-level BPE as described in the module doc or the encoder differs on a probe."""
        try:
            spec = json.loads(backend.to_str())
        except Exception:  # not a tokenizers.Tokenizer
            return None
        expression = _split_expression(spec)
        model = spec.get("model") or {}
        if (expression is None or not _passive(spec.get("normalizer")) or model.get("type") != "BPE"
                or model.get("dropout")):
            return None
        if (spec.get("decoder") or {}).get("type") != "ByteLevel":
            return None
        added = {}
        for token in spec.get("added_tokens") or []:
            if token.get("lstrip") or token.get("rstrip") or token.get("single_word"):
                return None
            added[token["content"]] = int(token["id"])
        translated = ascii_expression(expression)
        if translated is None:
            return None
        try:
            encoder = cls(backend, re.compile(translated), added)
            encoder._ascii = _ascii_texts(model.get("vocab") or {}, added)
            same = True
            for text in _PROBES:
                ids = backend.encode(text, add_special_tokens=False).ids
                same = (same and encoder.encode(text) == ids
                        and encoder.decode(ids) == backend.decode(ids, skip_special_tokens=False))
        except Exception:  # an expression Python's re reads differently, a model without tokenize()
            return None
        encoder._pieces.clear()
        return encoder if same else None

    def encode(self, text: str) -> list[int] | None:
        """The ids of ``text``, or None for text that is not printable ASCII, tab, CR or LF."""
        if not text.isascii() or _OUTSIDE.search(text):
            return None
        ids: list[int] = []
        parts = self._added_split.split(text) if self._added_split is not None else [text]
        for index, part in enumerate(parts):
            if index % 2:  # an added token (split's captured delimiter)
                ids.append(self._added[part])
            elif part:
                self._encode_span(part, ids)
        return ids

    def decode(self, ids: list[int]) -> str | None:
        """The text of ``ids`` (special tokens kept), or None when one of them is not a token
        whose bytes are all ASCII."""
        try:
            text = "".join(map(self._ascii.__getitem__, ids))
        except (IndexError, TypeError):  # beyond the vocabulary, or a token with other bytes
            return None
        return text if not ids or min(ids) >= 0 else None

    def _encode_span(self, span: str, ids: list[int]) -> None:
        pieces = self._splitter.findall(span) if not self._splitter.groups else None
        if pieces is None or sum(map(len, pieces)) != len(span):
            pieces = self._isolated_split(span)  # text no alternative matched is a piece too
        get = self._pieces.get
        for piece in pieces:
            cached = get(piece)
            ids += cached if cached is not None else self._piece(piece)

    def _isolated_split(self, span: str) -> list[str]:
        """The pieces of ``span``: every match and every stretch between matches."""
        pieces, at = [], 0
        for match in self._splitter.finditer(span):
            start, end = match.span()
            if start > at:
                pieces.append(span[at:start])
            if end > start:
                pieces.append(match.group())
            at = end
        if at < len(span):
            pieces.append(span[at:])
        return pieces

    def _piece(self, piece: str) -> list[int]:
        ids = self._pieces.get(piece)
        if ids is None:
            if len(self._pieces) >= _CACHE_LIMIT:
                self._pieces.clear()
            ids = self._pieces[piece] = [t.id for t in self._model.tokenize(piece.translate(self._alphabet))]
        return ids


def _ascii_texts(vocab: dict[str, int], added: dict[str, int]) -> list[str | None]:
    """Per id, the text of a token whose bytes are all ASCII (a vocabulary token through the
    byte-level alphabet; an added token whose characters stand for themselves in it), else None."""
    to_byte = {c: b for b, c in byte_level_alphabet().items()}
    size = max([*vocab.values(), *added.values(), -1]) + 1
    table: list[str | None] = [None] * size
    for token, index in vocab.items():
        raw = [to_byte.get(c) for c in token]
        if raw and all(b is not None and b < 128 for b in raw):
            table[index] = bytes(raw).decode("ascii")
    for content, index in added.items():
        table[index] = content if content and all("!" <= c <= "~" for c in content) else None
    return table


def _split_expression(spec: dict[str, Any]) -> str | None:
    """The expression that cuts text into pieces: GPT-2's for ``ByteLevel(use_regex=True)``, or a
    ``Split`` (isolated, not inverted) followed by ``ByteLevel(use_regex=False)``."""
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    if not steps or any(s.get("type") == "ByteLevel" and s.get("add_prefix_space") for s in steps):
        return None
    if len(steps) == 1 and steps[0].get("type") == "ByteLevel" and steps[0].get("use_regex", True):
        return _BYTE_LEVEL_EXPRESSION
    if (len(steps) == 2 and steps[0].get("type") == "Split" and steps[1].get("type") == "ByteLevel"
            and not steps[1].get("use_regex", True) and steps[0].get("behavior") == "Isolated"
            and not steps[0].get("invert") and isinstance(steps[0].get("pattern"), dict)):
        return steps[0]["pattern"].get("Regex")
    return None


def _passive(normalizer: dict[str, Any] | None) -> bool:
    """Whether a normalizer leaves ASCII text as it is."""
    if not normalizer:
        return True
    if normalizer.get("type") == "Sequence":
        return all(_passive(n) for n in normalizer.get("normalizers") or [])
    return normalizer.get("type") in _PASSIVE_NORMALIZERS
