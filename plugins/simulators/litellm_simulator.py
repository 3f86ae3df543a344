"""The ``litellm`` user simulator: any LiteLLM model string plays the user and the judge.

Typical models: ``dashscope/qwen-plus`` (Alibaba DashScope; key in ``DASHSCOPE_API_KEY``,
international endpoint through ``DASHSCOPE_API_BASE``) and
``openai/Qwen/Qwen3-30B-A3B-Instruct-2507`` with ``api_base`` pointing at a local SGLang or
vLLM OpenAI-compatible server (no key needed).

Why it is built this way:

* Retries are done here, with exponential backoff, and LiteLLM's own retries are switched off,
  so ``calls``, ``retries`` and ``failures`` are exact. After the last attempt the call raises
  :class:`~userrl_core.types.SimulatorError`; no text is ever invented.
* A semaphore bounds the attempts in flight (``max_concurrency``); it is made lazily for each
  event loop, since an asyncio primitive belongs to the loop it was first used in.
* The key is read from the environment once, at build time, held as a ``SecretStr`` and
  scrubbed from every error text that leaves this module.
* LiteLLM is imported on first build, not when the plugin loads: it takes seconds to import,
  and ``userrl plugins list`` should stay fast. ``LITELLM_LOCAL_MODEL_COST_MAP`` is set first
  so the import makes no network attempt; LiteLLM reuses its HTTP clients across calls.
* ``simulator.extra.transport`` picks how requests travel: ``litellm`` (every model),
  ``direct`` (:mod:`.openai_http`, pooled keep-alive connections per event loop, for an
  OpenAI-compatible server) or ``auto`` (the default: ``direct`` for ``openai/<name>`` with an
  ``api_base``, where LiteLLM has nothing to translate, else ``litellm``). A profile of 256
  concurrent calls showed LiteLLM spending about 8 ms of client CPU per call against under 1 ms
  for the direct client, which on a 2-core machine capped rollout efficiency near 0.3
  (docs/benchmarks.md). Both transports raise the same OpenAI SDK exception classes, so retries,
  counts and error texts are the same.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import weakref
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from userrl_core.config.schema import SimulatorConfig
from userrl_core.errors import ConfigError, MissingRequirementError
from userrl_core.redaction import redact
from userrl_core.types import SimulatorError, SimulatorRequest, SimulatorResponse

from .openai_http import ChatCompletionsClient, MalformedBody
from .retry import RetriesExhausted, RetryPolicy, call_with_retries
from .stats import SimulatorStats

log = logging.getLogger(__name__)

DASHSCOPE_PREFIX = "dashscope/"
DASHSCOPE_KEY_ENV = "DASHSCOPE_API_KEY"
DASHSCOPE_BASE_ENV = "DASHSCOPE_API_BASE"
LOCAL_SERVER_KEY = "EMPTY"  # OpenAI-compatible servers without auth accept any key
RETRYABLE_STATUS = {408, 409, 425, 429}
OPENAI_COMPATIBLE_PREFIX = "openai/"
TRANSPORTS = ("auto", "litellm", "direct")


class MalformedResponse(Exception):
    """The server answered 200 but the completion has no usable message text."""


def import_litellm() -> Any:
    """Import LiteLLM quietly and offline (its bundled price map, no banners)."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm
    import openai.resources.chat  # noqa: F401  imported lazily by the first call otherwise (seconds)

    litellm.suppress_debug_info = True
    litellm.telemetry = False
    # LiteLLM logs every call at INFO (and housekeeping notes at WARNING), httpx every request:
    # keep run logs readable. Failures reach the user through SimulatorError and the metrics.
    for name, level in (("LiteLLM", logging.ERROR), ("LiteLLM Router", logging.ERROR),
                        ("LiteLLM Proxy", logging.ERROR), ("httpx", logging.WARNING)):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET or logger.level < level:
            logger.setLevel(level)
    return litellm


def is_retryable(exc: BaseException) -> bool:
    """Transient errors: time-outs, connection errors, 5xx, 429 and malformed responses.

    Errors the server answered with a definite 4xx (bad request, authentication, unknown model)
    fail at once: repeating the same request cannot help.
    """
    import openai

    if isinstance(exc, (asyncio.TimeoutError, TimeoutError, MalformedResponse, MalformedBody, ConnectionError)):
        return True
    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError, openai.APIResponseValidationError)):
        return True
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status >= 500 or status in RETRYABLE_STATUS
    # An APIError without a status is how LiteLLM reports a body it could not decode.
    return isinstance(exc, (openai.APIError, ValueError))


def describe_error(exc: BaseException) -> str:
    """One line: the error class and its message, without LiteLLM's multi-line help text."""
    text = " ".join(str(exc).split())
    prefix = f"litellm.{type(exc).__name__}: "
    if text.startswith(prefix):  # LiteLLM repeats the class name in the message
        text = text[len(prefix):]
    if len(text) > 400:
        text = text[:400] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def resolve_api_key(config: SimulatorConfig, api_base: str | None, litellm: Any) -> SecretStr | None:
    """The key for this model, read from the environment at build time.

    * ``simulator.api_key_env`` set: that variable must hold the key.
    * ``dashscope/`` models: ``DASHSCOPE_API_KEY`` must hold it.
    * an ``api_base`` (a local server): no key; a placeholder is sent.
    * otherwise LiteLLM's own variable for the provider (``OPENAI_API_KEY``, ...) must be set.
    """
    model = config.model or ""
    env_var = config.api_key_env or (DASHSCOPE_KEY_ENV if model.startswith(DASHSCOPE_PREFIX) else None)
    if env_var:
        value = os.environ.get(env_var, "")
        if not value.strip():
            raise MissingRequirementError(
                f"simulator: the environment variable {env_var} is not set; it must hold the API key "
                f"for simulator.model {model!r}"
            )
        return SecretStr(value.strip())
    if api_base:
        return SecretStr(LOCAL_SERVER_KEY)
    check = litellm.validate_environment(model=model)
    missing = check.get("missing_keys") or []
    if missing:
        raise MissingRequirementError(
            f"simulator: model {model!r} needs the environment variable(s) {', '.join(missing)}; "
            f"or set simulator.api_key_env to the variable that holds the key"
        )
    return None  # LiteLLM reads the provider's variable itself


class LiteLLMSimulator:
    """A user simulator backed by one LiteLLM model. Safe to call concurrently."""

    name = "litellm"

    def __init__(self, config: SimulatorConfig, *, api_key: SecretStr | None, api_base: str | None,
                 litellm: Any) -> None:
        if not config.model:
            raise ConfigError("simulator.model: the litellm simulator needs a LiteLLM model string, "
                              "e.g. 'dashscope/qwen-plus' or 'openai/Qwen/Qwen3-30B-A3B-Instruct-2507'")
        self.config = config
        self.model = config.model
        self.api_base = api_base
        self._api_key = api_key
        self._litellm = litellm
        self._policy = RetryPolicy(num_retries=config.num_retries, backoff=config.retry_backoff,
                                   max_retry_after=config.timeout)
        self._semaphores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )
        self._deadline = config.timeout * 1.5 + 1.0
        self._stats = SimulatorStats()
        self.last_error: str | None = None
        self.json_mode = bool(config.extra.get("json_mode", False))
        self.transport = choose_transport(config, api_base)
        self._direct: ChatCompletionsClient | None = None
        self._prices: tuple[float, float] | None = None
        if self.transport == "direct":
            key = api_key.get_secret_value() if api_key is not None else None
            self._direct = ChatCompletionsClient(api_base or "", api_key=key)
            self._prices = token_prices(litellm, self.model)

    @property
    def label(self) -> str:
        where = f" at {self.api_base}" if self.api_base else ""
        return f"litellm {self.model}{where}"

    # ------------------------------------------------------------------ protocol

    def stats(self) -> dict[str, float]:
        return self._stats.as_dict()

    async def aclose(self) -> None:
        """Close this loop's direct HTTP session (LiteLLM owns and reuses its own clients)."""
        if self._direct is not None:
            await self._direct.aclose()
        self._semaphores.clear()

    async def complete(self, request: SimulatorRequest) -> SimulatorResponse:
        self._stats.calls += 1
        started = time.perf_counter()
        try:
            response, attempts = await call_with_retries(
                lambda: self._attempt(request),
                policy=self._policy,
                is_retryable=is_retryable,
                on_retry=self._note_retry,
            )
        except RetriesExhausted as exhausted:
            self._stats.failures += 1
            self._stats.latency_s += time.perf_counter() - started
            message = self._scrub(f"{self.model}: {describe_error(exhausted.last_error)}")
            self.last_error = message
            log.warning("simulator %s gave up after %d attempt(s): %s", self.label, exhausted.attempts, message)
            raise SimulatorError(self.name, message, exhausted.attempts) from None
        latency = time.perf_counter() - started
        # A server may echo the key (in an error text or a reply): it never reaches transcripts,
        # the report or the policy's context.
        text = self._scrub(response.text)
        prompt_tokens, completion_tokens = response.prompt_tokens, response.completion_tokens
        cost = self._cost(response)
        self._stats.prompt_tokens += prompt_tokens
        self._stats.completion_tokens += completion_tokens
        self._stats.cost_usd += cost
        self._stats.latency_s += latency
        return SimulatorResponse(text=text, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                 cost_usd=cost, latency_s=latency, attempts=attempts)

    # ------------------------------------------------------------------ one attempt

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        semaphore = self._semaphores.get(loop)
        if semaphore is None:
            semaphore = asyncio.Semaphore(self.config.max_concurrency)
            self._semaphores[loop] = semaphore
        return semaphore

    async def _attempt(self, request: SimulatorRequest) -> "_Completion":
        if self._direct is not None:
            return await self._attempt_direct(request)
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": list(request.messages),
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
            "timeout": self.config.timeout,
            "num_retries": 0,
            "max_retries": 0,
        }
        if self.api_base:
            kwargs["api_base"] = self.api_base
        if self._api_key is not None:
            kwargs["api_key"] = self._api_key.get_secret_value()
        if self.json_mode and request.response_format == "json":
            kwargs["response_format"] = {"type": "json_object"}
        async with self._semaphore():
            # The HTTP client's timeout bounds each connect and read; this outer deadline also
            # bounds a server that trickles bytes forever.
            raw = await asyncio.wait_for(self._litellm.acompletion(**kwargs), timeout=self._deadline)
        return self._parse(raw)

    async def _attempt_direct(self, request: SimulatorRequest) -> "_Completion":
        body: dict[str, Any] = {
            "model": self.model[len(OPENAI_COMPATIBLE_PREFIX):],
            "messages": list(request.messages),
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
        }
        if self.json_mode and request.response_format == "json":
            body["response_format"] = {"type": "json_object"}
        assert self._direct is not None
        async with self._semaphore():
            raw = await self._direct.create(body, timeout=self.config.timeout)
        return self._parse_json(raw)

    @staticmethod
    def _parse_json(raw: dict[str, Any]) -> "_Completion":
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise MalformedResponse("the completion has no choices")
        message = choices[0].get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            raise MalformedResponse("the completion's message has no text content")
        usage = raw.get("usage") if isinstance(raw.get("usage"), dict) else {}
        return _Completion(content, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0),
                           raw)

    def _parse(self, raw: Any) -> "_Completion":
        choices = getattr(raw, "choices", None)
        if not choices:
            raise MalformedResponse("the completion has no choices")
        message = getattr(choices[0], "message", None)
        content = getattr(message, "content", None)
        if not isinstance(content, str):
            raise MalformedResponse("the completion's message has no text content")
        usage = getattr(raw, "usage", None)
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        return _Completion(content, prompt_tokens, completion_tokens, raw)

    # ------------------------------------------------------------------ accounting

    def _cost(self, completion: "_Completion") -> float:
        """LiteLLM's price for the call; 0 (and counted as unpriced) for unpriced models."""
        if self._direct is not None:
            prompt_price, completion_price = self._prices or (0.0, 0.0)
            cost = prompt_price * completion.prompt_tokens + completion_price * completion.completion_tokens
        else:
            try:
                cost = float(self._litellm.completion_cost(completion_response=completion.raw))
            except Exception:  # LiteLLM raises when the model is not in its price map
                cost = 0.0
        if cost <= 0.0:
            self._stats.unpriced_calls += 1
            return 0.0
        return cost

    def _note_retry(self, retry_index: int, exc: BaseException, delay: float) -> None:
        self._stats.retries += 1
        log.info("simulator %s: retry %d in %.2fs after %s", self.label, retry_index + 1, delay,
                 self._scrub(describe_error(exc)))

    def _scrub(self, text: str) -> str:
        """Remove the API key (and any other protected secret) from a text that may be logged,
        raised, or shown to the policy."""
        if self._api_key is not None:
            secret = self._api_key.get_secret_value()
            if secret and secret != LOCAL_SERVER_KEY:
                text = text.replace(secret, "***")
        return redact(text)


@dataclass(frozen=True)
class _Completion:
    """What one successful attempt returned."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    raw: Any


def choose_transport(config: SimulatorConfig, api_base: str | None) -> str:
    """``simulator.extra.transport`` resolved to ``litellm`` or ``direct`` (see the module doc)."""
    setting = config.extra.get("transport", "auto")
    if setting not in TRANSPORTS:
        raise ConfigError(f"simulator.extra.transport: {setting!r} is not one of {', '.join(TRANSPORTS)}")
    openai_compatible = bool(api_base) and (config.model or "").startswith(OPENAI_COMPATIBLE_PREFIX)
    if setting == "direct" and not openai_compatible:
        raise ConfigError(
            f"simulator.extra.transport: 'direct' needs an OpenAI-compatible server: simulator.model "
            f"'{OPENAI_COMPATIBLE_PREFIX}<name>' and simulator.api_base; got model {config.model!r}, "
            f"api_base {api_base!r}"
        )
    if setting == "auto":
        return "direct" if openai_compatible else "litellm"
    return setting


def token_prices(litellm: Any, model: str) -> tuple[float, float] | None:
    """(USD per prompt token, USD per completion token) from LiteLLM's price map, or None when
    the model has no price (local servers), looked up once instead of per call."""
    try:
        info = litellm.get_model_info(model=model)
    except Exception:  # LiteLLM raises for models it does not know
        return None
    prompt = float(info.get("input_cost_per_token") or 0.0)
    completion = float(info.get("output_cost_per_token") or 0.0)
    return (prompt, completion) if prompt > 0 or completion > 0 else None


def build_litellm_simulator(*, config: SimulatorConfig, **kwargs: Any) -> LiteLLMSimulator:
    """Factory registered as ``litellm``: validates the model and reads the key before any
    training starts, so a missing key fails the run at once with the variable's name."""
    if not config.model:
        raise ConfigError("simulator.model: the litellm simulator needs a LiteLLM model string, "
                          "e.g. 'dashscope/qwen-plus' or 'openai/Qwen/Qwen3-30B-A3B-Instruct-2507'")
    litellm = import_litellm()
    api_base = config.api_base
    if api_base is None and config.model.startswith(DASHSCOPE_PREFIX):
        api_base = os.environ.get(DASHSCOPE_BASE_ENV) or None
    api_key = resolve_api_key(config, api_base if config.api_base else None, litellm)
    return LiteLLMSimulator(config, api_key=api_key, api_base=api_base, litellm=litellm)
