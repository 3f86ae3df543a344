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
rendered directly, fast tokenizers encode and decode through their Rust backend, byte-level BPE
tokenizers encode ASCII text through :mod:`userrl_core.rollout.piece_encoder`, and opening
prompts are cached by content (the ``rollout.n`` samples of a task share one). A continuation's
text is spliced, not rendered: the template's text around one new message is rendered once per
opening and role with a marker as content, and the message's content put in its place; this is
used only for roles whose content the template renders verbatim (checked on awkward contents:
empty, padded with whitespace, holding ``<think>`` or ``<tool_response>`` blocks or Jinja syntax).
Each shortcut is checked once against the tokenizer's own ``apply_chat_template`` / ``encode`` /
``decode`` on probe texts when a :class:`ChatTokens` is made, and not used if it differs; the
splice and the piece encoder are also compared with the slow way on one call in
``AUDIT_EVERY`` and switched off, with a warning, at the first difference.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, Callable, Sequence

from userrl_core.errors import ConfigError
from userrl_core.rollout.piece_encoder import PieceEncoder
from userrl_core.types import Message

log = logging.getLogger(__name__)

_PROBE_USER = {"role": "user", "content": "Hello."}
_PROMPT_CACHE_SIZE = 4096
_FRAME_CACHE_SIZE = 4096
AUDIT_EVERY = 64
"""One splice and one piece-encoded text in this many is also made the slow way and compared."""
_SPLICE_ROLES = ("user", "tool")
# contents a template might not render verbatim (trimmed, parsed for reasoning or tool blocks)
_AWKWARD_CONTENTS = ["", "x", "  padded on both sides \n", "\n\nblank lines\n\n", "\tTab\r\n",
                     "<think>\nreasoning\n</think>\n\nanswer", "<tool_response>\n{}\n</tool_response>",
                     "<tool_call>\n{\"name\": \"x\"}\n</tool_call>", "{{ braces }} {% raw %} {# hash #}",
                     "Ünïcödé ✓ — 東京"]


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
        self._pieces: PieceEncoder | None = None  # ASCII encoding with cached pieces, once checked
        self._frames: dict[tuple[Any, str], tuple[str, str] | None] = {}  # (opening, role) -> text around content
        self._splice_roles: frozenset[str] = frozenset()
        self._audits = {"splice": 0, "pieces": 0, "decode": 0}
        self._ascii_decode = True  # PieceEncoder.decode, until an audit finds a difference
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
        self._splice_roles = frozenset(r for r in _SPLICE_ROLES if self._renders_verbatim(r))

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
        if self._pieces is not None:
            ids = self._pieces.encode(text)
            if ids is not None:
                return self._audited("pieces", ids, lambda: self._encode_slow(text),
                                     lambda: f"the cached-piece tokenisation differed from the tokenizer's on "
                                             f"{text[:80]!r}; switched off for this run")
        return self._encode_slow(text)

    def _encode_slow(self, text: str) -> list[int]:
        if self._backend is not None:
            return self._backend.encode(text, add_special_tokens=False).ids
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    # what switches each shortcut off: (attribute, value)
    _SWITCHED_OFF = {"pieces": ("_pieces", None), "decode": ("_ascii_decode", False),
                     "splice": ("_splice_roles", frozenset())}

    def _audited(self, shortcut: str, fast: Any, slow: Callable[[], Any], warning: Callable[[], str]) -> Any:
        """``fast``, the result of ``shortcut``; on one call in ``AUDIT_EVERY`` compared with
        ``slow()``, and at a difference the shortcut is switched off, ``warning()`` logged and the
        slow result returned (the texts are built only then: this runs on every episode-turn)."""
        self._audits[shortcut] += 1
        if self._audits[shortcut] % AUDIT_EVERY:
            return fast
        expected = slow()
        if expected == fast:
            return fast
        setattr(self, *self._SWITCHED_OFF[shortcut])
        log.warning("%s", warning())
        return expected

    def decode(self, ids: Sequence[int]) -> str:
        """Decode ids verbatim: special tokens kept, no clean-up of spaces."""
        if self._pieces is not None and self._ascii_decode:
            text = self._pieces.decode(ids)
            if text is not None:
                return self._audited("decode", text, lambda: self._decode_slow(ids),
                                     lambda: f"the cached-text decoding differed from the tokenizer's on ids "
                                             f"{list(ids)[:20]}; switched off for this run")
        return self._decode_slow(ids)

    def _decode_slow(self, ids: Sequence[int]) -> str:
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
                self._pieces = PieceEncoder.for_tokenizer(backend)

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
        frame = self._frame(before, new_messages)
        if frame is None:
            return self._rendered_tail(before, new_messages)
        text = frame[0] + new_messages[0]["content"] + frame[1]
        return self._audited("splice", text, lambda: self._rendered_tail(before, new_messages),
                             lambda: f"the chat template did not render a {new_messages[0]['role']} message's "
                                     "content verbatim; continuations are rendered in full from now on")

    def _frame(self, before: Sequence[Message], new_messages: Sequence[Message]) -> tuple[str, str] | None:
        """The tail's text before and after the content of the one new message, when it can be
        spliced (module doc); None otherwise."""
        if len(new_messages) != 1:
            return None
        message = new_messages[0]
        role = message.get("role")
        if role not in self._splice_roles or len(message) != 2 or not isinstance(message.get("content"), str):
            return None
        key = _content_key(before)
        if key is None:
            return None
        if (key, role) not in self._frames:
            if len(self._frames) >= _FRAME_CACHE_SIZE:
                self._frames.clear()
            self._frames[(key, role)] = self._split_at_content(before, role)
        return self._frames[(key, role)]

    def _split_at_content(self, before: Sequence[Message], role: str) -> tuple[str, str] | None:
        marker = f"<<userrl-content-{uuid.uuid4().hex}>>"
        text = self._rendered_tail(before, [{"role": role, "content": marker}])
        at = text.find(marker)
        if at < 0 or text.find(marker, at + 1) >= 0:
            return None
        return text[:at], text[at + len(marker):]

    def _renders_verbatim(self, role: str) -> bool:
        """Whether the template puts a ``role`` message's content into its text unchanged."""
        try:
            frame = self._split_at_content([_PROBE_USER], role)
            if frame is None:
                return False
            contents = [*_AWKWARD_CONTENTS, self.end_of_turn_text]
            return all(self._rendered_tail([_PROBE_USER], [{"role": role, "content": c}]) == frame[0] + c + frame[1]
                       for c in contents)
        except Exception:  # the template rejects the role
            return False

    def _rendered_tail(self, before: Sequence[Message], new_messages: Sequence[Message]) -> str:
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
