"""Chat-template token bookkeeping: how a conversation becomes the exact ids the policy saw.

Token-in, token-out. The opening prompt is the chat template applied to the dataset's messages.
After that an episode only ever grows at its end: the ids the policy sampled are kept as they
are, and environment replies are appended as the tokens the template renders for the new
messages alone. History is never re-tokenised, so the trainer scores exactly the sampled ids.

How the new messages' tokens are found: the template is rendered for the history with the last
assistant turn replaced by a unique marker, followed by the new messages and the generation
prompt; the text after the marker's end-of-turn is the continuation. Because only the text
after the marker is used, a template that re-renders earlier turns differently (Qwen3 drops
``<think>`` from earlier assistant turns) cannot change the ids already held.
:meth:`ChatTokens.matches_rendering` tells whether the held ids still equal a fresh rendering (the
engine asks once per episode, at its last appended message),
which the engine counts as ``rollout/retokenization_mismatch_rate``.
"""

from __future__ import annotations

import uuid
from typing import Any, Sequence

from userrl_core.errors import ConfigError
from userrl_core.types import Message

_PROBE_USER = {"role": "user", "content": "Hello."}


class ChatTokens:
    """Renders and tokenises conversations for one tokenizer and chat template.

    ``tools`` (a list of JSON tool schemas) is passed to the template only when the template
    renders it. ``chat_template`` replaces the tokenizer's own template when given.
    """

    def __init__(self, tokenizer: Any, *, tools: list[dict[str, Any]] | None = None,
                 chat_template: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.tools: list[dict[str, Any]] | None = None
        if tools and self._template_renders_tools(tools):
            self.tools = tools
        self.supports_tool_role = self._template_renders_tool_role()
        self.end_of_turn_ids, self.end_of_turn_text = self._find_end_of_turn()
        stops = {self.end_of_turn_ids[-1]}
        if tokenizer.eos_token_id is not None:
            stops.add(int(tokenizer.eos_token_id))
        self.stop_token_ids: list[int] = sorted(stops)

    # ---------------------------------------------------------------------------------------
    # Rendering
    # ---------------------------------------------------------------------------------------

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool,
               tools: list[dict[str, Any]] | None = None) -> str:
        """The template's text for ``messages`` (tools as configured unless given)."""
        kwargs: dict[str, Any] = {"tokenize": False, "add_generation_prompt": add_generation_prompt}
        if self.chat_template is not None:
            kwargs["chat_template"] = self.chat_template
        use_tools = self.tools if tools is None else tools
        if use_tools:
            kwargs["tools"] = use_tools
        return self.tokenizer.apply_chat_template(list(messages), **kwargs)

    def encode(self, text: str) -> list[int]:
        """Tokenise template text (special-token strings become their ids; no BOS added)."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        """Decode ids verbatim: special tokens kept, no clean-up of spaces."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    # ---------------------------------------------------------------------------------------
    # What episodes use
    # ---------------------------------------------------------------------------------------

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        """The opening prompt: the template applied to the dataset messages plus the
        generation prompt."""
        return self.encode(self.render(messages, add_generation_prompt=True))

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
        marker = f"<<userrl-turn-{uuid.uuid4().hex}>>"
        probe = [*history[:-1], {"role": "assistant", "content": marker}, *new_messages]
        text = self.render(probe, add_generation_prompt=True)
        at = text.find(marker)
        if at < 0:
            raise ConfigError("the chat template drops assistant message content; it cannot be used for rollouts")
        tail = text[at + len(marker):]
        if turn_closed:
            if not tail.startswith(self.end_of_turn_text):
                raise ConfigError(
                    f"the chat template does not end assistant turns with {self.end_of_turn_text!r} consistently"
                )
            tail = tail[len(self.end_of_turn_text):]
        return self.encode(tail)

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
