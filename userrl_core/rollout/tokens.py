"""Chat-template token bookkeeping: how a conversation becomes the exact ids the policy saw.

Token-in, token-out. The opening prompt is the chat template applied to the dataset's messages.
After that an episode only ever grows at its end: the ids the policy sampled are kept as they
are, and environment replies are appended as the tokens the template renders for the new
messages alone. History is never re-tokenised, so the trainer scores exactly the sampled ids.

How the new messages' tokens are found: the template is rendered for the history with the last
assistant turn replaced by a unique marker, followed by the new messages and the generation
prompt; the text after the marker's end-of-turn is the continuation. Because only the text
after the marker is used, a template that re-renders earlier turns differently (Qwen3 drops
``<think>`` from earlier assistant turns) cannot change the ids already held. The probe keeps
only the opening messages (those before the first assistant turn) of the history: the text
after the marker depends on the marker's neighbours, not on the turns in between, and the
probe then costs the same at turn 8 as at turn 1 (the first continuation after a second
assistant turn of every :class:`ChatTokens` is computed both ways, and the full history is
used if they differ).

:meth:`ChatTokens.matches_rendering` tells whether the held ids still equal a fresh rendering (the
engine asks once per episode, at its last appended message),
which the engine counts as ``rollout/retokenization_mismatch_rate``.

Speed (the rollout does this for every episode-turn): the chat template is compiled once and
rendered directly, fast tokenizers encode and decode through their Rust backend, and opening
prompts are cached by content (the ``rollout.n`` samples of a task share one). Each shortcut is
checked once against the tokenizer's own ``apply_chat_template`` / ``encode`` / ``decode`` on
probe texts when a :class:`ChatTokens` is made, and not used if it differs.
"""

from __future__ import annotations

import uuid
from typing import Any, Sequence

from userrl_core.errors import ConfigError
from userrl_core.types import Message

_PROBE_USER = {"role": "user", "content": "Hello."}
_PROMPT_CACHE_SIZE = 4096


class ChatTokens:
    """Renders and tokenises conversations for one tokenizer and chat template.

    ``tools`` (a list of JSON tool schemas) is passed to the template only when the template
    renders it. ``chat_template`` replaces the tokenizer's own template when given.
    """

    def __init__(self, tokenizer: Any, *, tools: list[dict[str, Any]] | None = None,
                 chat_template: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self._compiled: Any = None  # the compiled Jinja template, once checked
        self._backend: Any = None  # the Rust tokenizer of a fast tokenizer, once checked
        self._short_probe: bool | None = None  # None: not decided until a continuation after turn 2
        self._marker = f"<<userrl-turn-{uuid.uuid4().hex}>>"  # no model output can contain it
        self._prompt_cache: dict[tuple[tuple[Any, Any], ...], list[int]] = {}
        self.tools: list[dict[str, Any]] | None = None
        if tools and self._template_renders_tools(tools):
            self.tools = tools
        self.supports_tool_role = self._template_renders_tool_role()
        self.end_of_turn_ids, self.end_of_turn_text = self._find_end_of_turn()
        stops = {self.end_of_turn_ids[-1]}
        if tokenizer.eos_token_id is not None:
            stops.add(int(tokenizer.eos_token_id))
        self.stop_token_ids: list[int] = sorted(stops)
        self._use_shortcuts()

    # ---------------------------------------------------------------------------------------
    # Rendering
    # ---------------------------------------------------------------------------------------

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool,
               tools: list[dict[str, Any]] | None = None) -> str:
        """The template's text for ``messages`` (tools as configured unless given)."""
        use_tools = self.tools if tools is None else tools
        if self._compiled is not None:
            return self._compiled.render(messages=list(messages), tools=use_tools or None, documents=None,
                                         add_generation_prompt=add_generation_prompt, **self._template_kwargs)
        return self._render_slow(messages, add_generation_prompt=add_generation_prompt, tools=use_tools)

    def _render_slow(self, messages: Sequence[Message], *, add_generation_prompt: bool,
                     tools: list[dict[str, Any]] | None) -> str:
        kwargs: dict[str, Any] = {"tokenize": False, "add_generation_prompt": add_generation_prompt}
        if self.chat_template is not None:
            kwargs["chat_template"] = self.chat_template
        if tools:
            kwargs["tools"] = tools
        return self.tokenizer.apply_chat_template(list(messages), **kwargs)

    def encode(self, text: str) -> list[int]:
        """Tokenise template text (special-token strings become their ids; no BOS added)."""
        if self._backend is not None:
            return self._backend.encode(text, add_special_tokens=False).ids
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        """Decode ids verbatim: special tokens kept, no clean-up of spaces."""
        if self._backend is not None:
            return self._backend.decode(list(ids), skip_special_tokens=False)
        return self.tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def _use_shortcuts(self) -> None:
        """Render with the compiled template and code with the Rust tokenizer where each gives
        exactly what the tokenizer's own methods give on probe conversations."""
        probes = [
            [_PROBE_USER],
            [{"role": "system", "content": "Be brief."}, _PROBE_USER, {"role": "assistant", "content": "Hi <b>x</b>"},
             {"role": "user", "content": "Dates?\n  May 3 - 5, \"Rome\" & more"}],
        ]
        template = self.chat_template if self.chat_template is not None else getattr(self.tokenizer, "chat_template", None)
        if isinstance(template, str):
            try:
                from transformers.utils.chat_template_utils import _compile_jinja_template

                self._compiled = _compile_jinja_template(template)
                self._template_kwargs = dict(getattr(self.tokenizer, "special_tokens_map", {}) or {})
                same = all(
                    self.render(m, add_generation_prompt=g) ==
                    self._render_slow(m, add_generation_prompt=g, tools=self.tools)
                    for m in probes for g in (False, True)
                )
            except Exception:  # a transformers without this function, or a template it cannot compile
                same = False
            if not same:
                self._compiled = None
        backend = getattr(self.tokenizer, "backend_tokenizer", None) if getattr(self.tokenizer, "is_fast", False) else None
        if backend is not None:
            texts = [self._render_slow(m, add_generation_prompt=True, tools=self.tools) for m in probes]
            slow = [list(self.tokenizer.encode(t, add_special_tokens=False)) for t in texts]
            try:
                fast = [backend.encode(t, add_special_tokens=False).ids for t in texts]
                decoded = [backend.decode(ids, skip_special_tokens=False) for ids in slow]
            except Exception:
                return
            slow_decoded = [self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
                            for ids in slow]
            if fast == slow and decoded == slow_decoded:
                self._backend = backend

    # ---------------------------------------------------------------------------------------
    # What episodes use
    # ---------------------------------------------------------------------------------------

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        """The opening prompt: the template applied to the dataset messages plus the
        generation prompt."""
        key = _content_key(messages)
        if key is None:
            return self.encode(self.render(messages, add_generation_prompt=True))
        ids = self._prompt_cache.get(key)
        if ids is None:
            if len(self._prompt_cache) >= _PROMPT_CACHE_SIZE:
                self._prompt_cache.clear()
            ids = self._prompt_cache[key] = self.encode(self.render(messages, add_generation_prompt=True))
        return list(ids)

    def ends_turn(self, sampled: Sequence[int]) -> bool:
        """Whether a sampled turn ended with a stop token (rather than hitting the length cap)."""
        return bool(sampled) and sampled[-1] in self.stop_token_ids

    def continuation_ids(self, history: Sequence[Message], new_messages: Sequence[Message], *,
                         turn_closed: bool) -> list[int]:
        """Ids to append after the last (sampled) assistant turn of ``history``.

        They are the template's end-of-turn text for that assistant turn (only the part after
        the end-of-turn token when the policy sampled it, ``turn_closed``), the new messages,
        and the generation prompt for the next assistant turn.
        """
        if not history or history[-1].get("role") != "assistant":
            raise ValueError("continuation_ids needs a history that ends with an assistant message")
        opening = _opening(history)
        if len(opening) == len(history) - 1:  # the first turn: the opening is the whole history
            tail = self._tail(opening, new_messages)
        elif self._short_probe is None:  # decided once, on the first longer history
            tail = self._tail(history[:-1], new_messages)
            self._short_probe = self._tail(opening, new_messages) == tail
        else:
            tail = self._tail(opening if self._short_probe else history[:-1], new_messages)
        if turn_closed:
            if not tail.startswith(self.end_of_turn_text):
                raise ConfigError(
                    f"the chat template does not end assistant turns with {self.end_of_turn_text!r} consistently"
                )
            tail = tail[len(self.end_of_turn_text):]
        return self.encode(tail)

    def _tail(self, before: Sequence[Message], new_messages: Sequence[Message]) -> str:
        """The template's text after an assistant turn that follows ``before``: that turn's
        end-of-turn text, ``new_messages`` and the generation prompt."""
        marker = self._marker
        probe = [*before, {"role": "assistant", "content": marker}, *new_messages]
        text = self.render(probe, add_generation_prompt=True)
        at = text.find(marker)
        if at < 0:
            raise ConfigError("the chat template drops assistant message content; it cannot be used for rollouts")
        return text[at + len(marker):]

    def closing_ids(self) -> list[int]:
        """The end-of-turn ids appended after a turn cut off by the length cap."""
        return list(self.end_of_turn_ids)

    def matches_rendering(self, held_ids: Sequence[int], messages: Sequence[Message]) -> bool:
        """Whether ``held_ids`` equal a fresh tokenisation of ``messages`` with the generation
        prompt: False when the template re-renders history or sampled ids are not the canonical
        tokenisation of their text. Informational only: held ids are never replaced."""
        return self.prompt_ids(messages) == list(held_ids)

    # ---------------------------------------------------------------------------------------
    # Template probing (once per engine)
    # ---------------------------------------------------------------------------------------

    def _try_render(self, messages: list[Message], **kwargs: Any) -> str | None:
        try:
            return self.render(messages, **kwargs)
        except Exception:  # a template may reject roles or tools it does not know (jinja raise_exception)
            return None

    def _template_renders_tools(self, tools: list[dict[str, Any]]) -> bool:
        plain = self._try_render([_PROBE_USER], add_generation_prompt=False, tools=[])
        with_tools = self._try_render([_PROBE_USER], add_generation_prompt=False, tools=tools)
        return plain is not None and with_tools is not None and plain != with_tools

    def _template_renders_tool_role(self) -> bool:
        marker = f"<<userrl-tool-{uuid.uuid4().hex}>>"
        messages = [_PROBE_USER, {"role": "assistant", "content": "Hi."}, {"role": "tool", "content": marker}]
        text = self._try_render(messages, add_generation_prompt=True)
        return text is not None and marker in text

    def _find_end_of_turn(self) -> tuple[list[int], str]:
        """The ids that close an assistant turn: the template's text after an assistant
        message, up to and including its first special token (``<|im_end|>`` for ChatML)."""
        marker = f"<<userrl-eot-{uuid.uuid4().hex}>>"
        text = self.render([_PROBE_USER, {"role": "assistant", "content": marker}], add_generation_prompt=False)
        trailer = text[text.find(marker) + len(marker):]
        ids = self.encode(trailer)
        special = set(self.tokenizer.all_special_ids)
        special.update(i for i, t in getattr(self.tokenizer, "added_tokens_decoder", {}).items() if t.special)
        for index, token in enumerate(ids):
            if token in special:
                closing = ids[: index + 1]
                return closing, self.decode(closing)
        raise ConfigError(
            "the chat template does not close assistant turns with a special token "
            f"(after an assistant message it renders {trailer!r}); set model.chat_template"
        )


def _opening(history: Sequence[Message]) -> list[Message]:
    """The messages before the first assistant turn (system prompt, task)."""
    for index, message in enumerate(history):
        if message.get("role") == "assistant":
            return list(history[:index])
    return list(history[:-1])


def _content_key(messages: Sequence[Message]) -> tuple[tuple[Any, Any], ...] | None:
    """A hashable key for messages made only of string roles and contents, else None."""
    key = []
    for message in messages:
        if len(message) != 2 or not isinstance(message.get("content"), str) or not isinstance(message.get("role"), str):
            return None
        key.append((message["role"], message["content"]))
    return tuple(key)
