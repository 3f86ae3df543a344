"""Multi-turn rollouts: the async engine, the action parser and chat-template token bookkeeping."""

from userrl_core.rollout.actions import (
    CHOICES,
    INTERACT_WITH_ENV_TOOL,
    MAX_PARSE_CHARS,
    TOOL_NAME,
    ParsedReply,
    parse_reply,
    strip_thinking,
)
from userrl_core.rollout.engine import RolloutEngine, RolloutResult, derive_seed
from userrl_core.rollout.summary import rollout_metrics, validation_metrics
from userrl_core.rollout.tokens import ChatTokens

__all__ = [
    "CHOICES",
    "INTERACT_WITH_ENV_TOOL",
    "MAX_PARSE_CHARS",
    "TOOL_NAME",
    "ChatTokens",
    "ParsedReply",
    "RolloutEngine",
    "RolloutResult",
    "derive_seed",
    "parse_reply",
    "rollout_metrics",
    "strip_thinking",
    "validation_metrics",
]
