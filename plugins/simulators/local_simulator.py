"""The ``local`` user simulator: offline, no key, no network, deterministic for a seed.

It does not read the prompt messages: it reads the structured ``SimulatorRequest.context`` that
an environment provides (IntentionGym does; its shape is in
``userrl_plugins.intentiongym.prompts``). A request without such a context fails with a
:class:`~userrl_core.types.SimulatorError` saying so: the local simulator only serves
environments that describe their hidden facts in structured form.

* **Judge** (``purpose="judge"``): the question and, for each still-missing detail, its
  description and its example inquiry are embedded with all-MiniLM-L6-v2; a detail is covered
  when ``max(cos(question, description), cos(question, inquiry)) > simulator.local.judge_threshold`` and, unless
  ``simulator.local.judge_margin`` is null, that score is within the margin of the best detail's
  (so a question about one detail does not also cover its look-alike siblings: the example
  inquiries of one task share much wording). The answer is JSON in the format the context's
  ``judge_format`` names, with the labels the context gives each detail: ``userrl``
  ``{"analysis", "is_task_related", "covered_detail_indices"}`` (related exactly when something
  is covered: an embedding judge has no other notion of relatedness) or ``numbered``
  ``{"covered": [...]}`` (also when the context names no format).
* **Reply** (``purpose="reply"``): the user states one of the options of every detail the judge
  would count as covered (best match first), picked from ``(seed, task, detail, turn)``; when
  nothing matches, a polite redirect. No detail that was not asked about is ever revealed.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from userrl_core.config.schema import SimulatorConfig
from userrl_core.config.sections import section_settings
from userrl_core.types import SimulatorError, SimulatorRequest, SimulatorResponse

from .local_settings import LocalSimulatorSettings
from .embeddings import EmbeddingCache, SentenceEncoder
from .stats import SimulatorStats

_ANSWER_TEMPLATES = (
    "For the {topic}, {option}.",
    "As for the {topic}: {option}.",
    "Regarding the {topic}, I'd go with {option}.",
    "Good question. The {topic} I have in mind is: {option}.",
)
_NO_PREFERENCE = "I don't have a strong preference about the {topic}."
_REDIRECTS = (
    "I'm not sure that matters much for what I need. Is there something else about my request you'd like to know?",
    "Hmm, I haven't really thought about that. Maybe ask me about another part of the request?",
    "That's not something I have an opinion on. What else would help you with my request?",
    "I don't think that's important here. Could you ask about a different aspect of what I want?",
)


@dataclass(frozen=True)
class Detail:
    """One still-missing detail as the environment describes it."""

    number: int
    description: str
    inquiry: str
    options: tuple[str, ...]


@dataclass(frozen=True)
class Match:
    number: int
    score: float
    detail: Detail


def local_settings(config: SimulatorConfig) -> LocalSimulatorSettings:
    """The recipe's ``simulator.local`` section."""
    return section_settings(config, "local", LocalSimulatorSettings, path="simulator.local")


def stable_index(size: int, *parts: object) -> int:
    """An index in ``range(size)`` that depends only on ``parts`` (not on Python's hash seed)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % size


def _topic(description: str) -> str:
    text = description.strip().rstrip(".")
    return text[:1].lower() + text[1:] if text[:2] != text[:2].upper() else text


class LocalSimulator:
    """The embedded simulator and judge. Safe to call concurrently (embeddings are batched)."""

    name = "local"

    def __init__(self, config: SimulatorConfig, *, encoder: SentenceEncoder | None = None) -> None:
        self.config = config
        settings = local_settings(config)
        self.threshold = settings.judge_threshold
        self.margin = settings.judge_margin
        self.seed = config.seed if config.seed is not None else 0
        self.embeddings = EmbeddingCache(encoder if encoder is not None else SentenceEncoder(settings.embedding_model))
        self._stats = SimulatorStats()
        self.last_error: str | None = None

    # ------------------------------------------------------------------ protocol

    def stats(self) -> dict[str, float]:
        return self._stats.as_dict()

    async def aclose(self) -> None:
        """Nothing to release: the model is freed with the simulator."""

    async def complete(self, request: SimulatorRequest) -> SimulatorResponse:
        self._stats.calls += 1
        started = time.perf_counter()
        try:
            question, details = self._read_context(request)
            matches = await self.match(question, details)
        except SimulatorError as exc:
            self._stats.failures += 1
            self.last_error = exc.last_error
            raise
        if request.purpose == "judge":
            text = self._verdict(request.context, self.covered(matches))
        else:
            text = self._reply(request.context, matches)
        latency = time.perf_counter() - started
        self._stats.latency_s += latency
        return SimulatorResponse(text=text, latency_s=latency, attempts=1)

    # ------------------------------------------------------------------ judging

    async def match(self, question: str, details: Sequence[Detail]) -> list[Match]:
        """Every detail with its similarity to the question, best first (ties by number)."""
        if not details:
            return []
        texts = [question] + [d.description for d in details] + [d.inquiry for d in details]
        vectors = await self.embeddings.embed(texts)
        q = vectors[0]
        n = len(details)
        scores = np.maximum(vectors[1:1 + n] @ q, vectors[1 + n:] @ q)
        matches = [Match(d.number, float(s), d) for d, s in zip(details, scores)]
        return sorted(matches, key=lambda m: (-m.score, m.number))

    def covered(self, matches: Sequence[Match]) -> list[Match]:
        """The matches that count as covered: above the threshold and, when a margin is set,
        within ``margin`` of the best match (one question about one detail should not also
        cover its look-alike siblings)."""
        if not matches:
            return []
        best = max(m.score for m in matches)
        floor = best - self.margin if self.margin is not None else -np.inf
        return [m for m in matches if m.score > self.threshold and m.score >= floor]

    def _verdict(self, context: dict[str, Any], covered: Sequence[Match]) -> str:
        labels = [m.number for m in covered]
        if context.get("judge_format") == "userrl":
            best = f"closest detail: {covered[0].detail.description!r} (cosine {covered[0].score:.2f})" if covered else (
                f"no detail above the similarity threshold {self.threshold}"
            )
            return json.dumps({"analysis": f"embedding judge; {best}", "is_task_related": bool(labels),
                               "covered_detail_indices": labels})
        return json.dumps({"covered": labels})

    def _read_context(self, request: SimulatorRequest) -> tuple[str, list[Detail]]:
        context = request.context or {}
        env = context.get("env", "unknown")
        judge_format = context.get("judge_format", "numbered")
        if judge_format not in ("userrl", "numbered"):
            self._fail(f"context.judge_format {judge_format!r} of environment {env!r} is not 'userrl' or 'numbered'")
        raw_details = context.get("details")
        question = context.get("question")
        if not isinstance(raw_details, list) or not isinstance(question, str):
            self._fail(
                f"the request has no structured context with 'question' and 'details' (environment {env!r}); "
                "the local simulator only serves environments that provide one, such as IntentionGym; "
                "use the hf (offline, any environment) or litellm simulator for others"
            )
        details: list[Detail] = []
        for index, raw in enumerate(raw_details):
            try:
                details.append(Detail(
                    number=int(raw["number"]),
                    description=str(raw["description"]),
                    inquiry=str(raw.get("inquiry") or raw["description"]),
                    options=tuple(str(o) for o in raw.get("options") or ()),
                ))
            except (KeyError, TypeError, ValueError) as exc:
                self._fail(f"context.details[{index}] of environment {env!r} is unusable: {exc!r}")
        return question, details

    def _fail(self, message: str) -> None:
        raise SimulatorError(self.name, message, attempts=1)

    # ------------------------------------------------------------------ replying

    def _reply(self, context: dict[str, Any], matches: list[Match]) -> str:
        task = context.get("task", "")
        turn = context.get("turn", 0)
        episode_seed = context.get("seed", 0)
        covered = self.covered(matches)
        if not covered:
            return _REDIRECTS[stable_index(len(_REDIRECTS), self.seed, episode_seed, task, turn, "redirect")]
        sentences = []
        for match in covered:
            detail = match.detail
            topic = _topic(detail.description)
            if not detail.options:
                sentences.append(_NO_PREFERENCE.format(topic=topic))
                continue
            key = (self.seed, episode_seed, task, detail.number, turn)
            option = detail.options[stable_index(len(detail.options), *key, "option")]
            template = _ANSWER_TEMPLATES[stable_index(len(_ANSWER_TEMPLATES), *key, "template")]
            sentences.append(template.format(topic=topic, option=option))
        return " ".join(sentences)


def build_local_simulator(*, config: SimulatorConfig, **kwargs: Any) -> LocalSimulator:
    """Factory registered as ``local``: loads the embedding model once per run."""
    return LocalSimulator(config)
