"""From finished episodes to the tensors the update consumes.

Episodes are turned into padded token tensors, per-turn reward tensors and the per-token turn
index that the advantage function needs. Python loops here run over episodes and turns (tens to
thousands), never over tokens; the per-token work is tensor slicing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from userrl_core.types import Episode, EpisodeStatus, TrainBatch


@dataclass
class Selection:
    """The episodes that train this step, and why the others do not."""

    kept: list[Episode]
    excluded_failed: int  # failed episodes themselves (simulator failures and environment errors)
    excluded_by_group: int  # healthy episodes left out with a failed group member


def select_for_training(episodes: list[Episode], mode: str) -> Selection:
    """Drop failed episodes (``mode="episode"``) or their whole GRPO group (``mode="group"``).

    A failed simulator call or a broken environment step must not leak into the update: its turn
    has no reward, and a group baseline computed without it is biased, hence the group mode by
    default. Every status but ``OK`` counts as failed here.
    """
    failed_groups = {e.group for e in episodes if e.status is not EpisodeStatus.OK}
    failed = sum(e.status is not EpisodeStatus.OK for e in episodes)
    if mode == "group":
        kept = [e for e in episodes if e.group not in failed_groups]
    else:
        kept = [e for e in episodes if e.status is EpisodeStatus.OK]
    return Selection(kept=kept, excluded_failed=failed, excluded_by_group=len(episodes) - len(kept) - failed)


def turn_tensors(episodes: list[Episode]) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn rewards ``[E, K]`` and the turn mask ``[E, K]`` (K = most turns of any episode)."""
    k = max((len(e.turns) for e in episodes), default=0) or 1
    rewards = torch.zeros(len(episodes), k, dtype=torch.float64)
    mask = torch.zeros(len(episodes), k, dtype=torch.float64)
    for i, episode in enumerate(episodes):
        n = len(episode.turns)
        if n:
            rewards[i, :n] = torch.tensor(episode.turn_rewards, dtype=torch.float64)
            mask[i, :n] = 1.0
    return rewards, mask


def token_tensors(episodes: list[Episode], pad_id: int) -> TrainBatch:
    """Right-padded ``input_ids``, ``attention_mask``, ``loss_mask``; advantages left at 0."""
    length = max(len(e.token_ids) for e in episodes)
    size = (len(episodes), length)
    input_ids = torch.full(size, pad_id, dtype=torch.long)
    attention = torch.zeros(size, dtype=torch.long)
    loss_mask = torch.zeros(size, dtype=torch.float32)
    for i, episode in enumerate(episodes):
        n = len(episode.token_ids)
        input_ids[i, :n] = torch.tensor(episode.token_ids, dtype=torch.long)
        attention[i, :n] = 1
        loss_mask[i, :n] = torch.tensor(episode.loss_mask, dtype=torch.float32)
    return TrainBatch(input_ids=input_ids, attention_mask=attention, loss_mask=loss_mask,
                      advantages=torch.zeros(size, dtype=torch.float32))


def token_turn_index(episodes: list[Episode], length: int) -> torch.Tensor:
    """``[E, T]``: the index of the turn that sampled each token, -1 for every other token."""
    index = torch.full((len(episodes), length), -1, dtype=torch.long)
    for i, episode in enumerate(episodes):
        for j, turn in enumerate(episode.turns):
            index[i, turn.start:turn.end] = j
    return index
