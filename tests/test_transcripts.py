"""What a transcript line says about a failed turn (finding 4 of the reliability review): the
environment gave no reward, so the line says null, never 0.0."""

from __future__ import annotations

from userrl_core.training.metrics import episode_record
from userrl_core.rollout.summary import SIMULATOR_ERROR_KEY
from userrl_core.types import Action, Episode, EpisodeStatus, Task, Turn


def test_failed_turn_is_written_with_a_null_reward():
    task = Task(id="t1", env_name="IntentionGym", data_source="interact_intention", prompt=[], payload={})
    ok = Turn(start=0, end=2, text="Where to?", action=Action("action", "Where to?"), reward=0.0,
              observation="Paris.")
    failed = Turn(start=2, end=4, text="When?", action=Action("action", "When?"), reward=0.0,
                  info={SIMULATOR_ERROR_KEY: "judge gave no usable verdict"})
    episode = Episode(task=task, group=0, sample=0, token_ids=[1, 2, 3, 4], loss_mask=[1, 1, 1, 1],
                      prompt_length=0, turns=[ok, failed], messages=[], status=EpisodeStatus.FAILED,
                      end_reason="failed", error="judge gave no usable verdict")
    record = episode_record(3, episode)
    assert [t["reward"] for t in record["turns"]] == [0.0, None]
