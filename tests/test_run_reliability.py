"""Whole training runs through the real CLI against a loopback OpenAI-compatible simulator
server (tests/support/openai_server.py), tiny random-init policy: the acceptance checks of the
reliability review.

* Faults of every kind, 20% of requests, a canary key in the environment: the run finishes;
  every fault the server served is counted (retries + failures for transport faults,
  unusable replies for judge faults) in metrics.jsonl and summary.json; no failed turn has a
  reward; validation means leave failed episodes out; the canary is in no file of the run
  folder and nowhere in stdout or stderr (findings 1-4, 12).
* A judge that never gives a usable verdict: every turn fails, the failures are counted, and
  the run stops after trainer.max_steps_without_update steps with exit status 3 (findings 2, 5).
* Resume after a crash that lost the last checkpoint: metrics.jsonl keeps one line per step
  (finding 7).
"""

from __future__ import annotations

import json
import random
import shutil
import threading
from collections import Counter
from pathlib import Path

import pytest

from support.openai_server import Behaviour, OpenAIServer, hang, raw, reply, status
from support.tiny_runs import JUDGE_VERDICT_NONE, is_judge_request, run_userrl, tiny_recipe

CANARY = "canary-e41b7d09c3a2f865"
KEY_VAR = "USERRL_TEST_CANARY_API_KEY"
JUDGE_COVERS_FIRST = '{"covered": [1], "covered_detail_indices": [0], "is_task_related": true}'
NESTED = '{"covered_detail_indices": ' + "[" * 3000 + "]" * 3000 + ', "covered": []}'

TRANSPORT_FAULTS = {
    "500": lambda: status(500),
    "429": lambda: status(429, headers={"Retry-After": "0.2"}),
    "hang": lambda: hang(1.6),  # past simulator.timeout=1.0
    "truncated": lambda: raw('{"id": "x", "object": "chat.completion", "choices": [{"mess'),
    "empty_choices": lambda: raw(json.dumps({"id": "x", "object": "chat.completion", "choices": [],
                                             "usage": {"prompt_tokens": 1, "completion_tokens": 0}})),
}
JUDGE_FAULTS = {
    "unparseable": lambda: reply("Hmm, the question seems to be about the budget, I think."),
    "nested": lambda: reply(NESTED),
}


class FaultyServer:
    """Decides each request's answer: 20% faults (seeded), kinds in turn; judge faults only on
    judge requests (a user reply is free text, nothing parses it). The first six judge requests
    are unparseable, so that some episodes surely fail (judge_retries=1). Counts what it served."""

    def __init__(self, seed: int = 7) -> None:
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.served: Counter[str] = Counter()
        self.judge_requests = 0
        self.kinds = list(TRANSPORT_FAULTS) + list(JUDGE_FAULTS)
        self.next_kind = 0

    def __call__(self, body) -> Behaviour:
        judge = is_judge_request(body)
        with self.lock:
            if judge:
                self.judge_requests += 1
                if self.judge_requests <= 6:
                    self.served["unparseable"] += 1
                    return JUDGE_FAULTS["unparseable"]()
            if self.random.random() < 0.2:
                kind = self.kinds[self.next_kind % len(self.kinds)]
                if kind in TRANSPORT_FAULTS or judge:
                    self.next_kind += 1
                    self.served[kind] += 1
                    return (TRANSPORT_FAULTS.get(kind) or JUDGE_FAULTS[kind])()
            if judge:
                return reply(JUDGE_COVERS_FIRST)
            if self.random.random() < 0.1:  # a user simulator that echoes the key it was sent
                return reply(f"Sure. By the way, your key is {CANARY}.")
            return reply("I would like it to be simple.")

    @property
    def transport_faults(self) -> int:
        return sum(self.served[k] for k in TRANSPORT_FAULTS)

    @property
    def judge_faults(self) -> int:
        return sum(self.served[k] for k in JUDGE_FAULTS)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def metric_total(rows: list[dict], name: str) -> float:
    return sum(row.get(name) or 0.0 for row in rows) + sum(row.get("val-aux/" + name) or 0.0 for row in rows)


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("faulty")
    faults = FaultyServer()
    with OpenAIServer(default=faults, max_hang_s=5) as server:
        recipe = tiny_recipe(
            root, tiny_model_dir, api_base=server.base_url,
            simulator={"api_key_env": KEY_VAR, "timeout": 1.0, "num_retries": 2, "retry_backoff": 0.01,
                       "extra": {"transport": "direct"}},
            env={"IntentionGym": {"judge_retries": 1}},
            data={"val_max_tasks": 4},
            trainer={"total_training_steps": 2, "test_freq": 2, "max_steps_without_update": 5},
            logging={"transcripts_per_step": 100},
        )
        result = run_userrl("run", str(recipe), "--run-dir", str(root / "run"), env={KEY_VAR: CANARY})
        requests = server.request_count
    return root / "run", result, faults, requests


def test_the_faulty_run_finishes_and_counts_every_fault(faulty_run):
    run_dir, result, faults, requests = faulty_run
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert set(faults.served) == set(TRANSPORT_FAULTS) | set(JUDGE_FAULTS), faults.served
    assert faults.transport_faults + faults.judge_faults >= 0.15 * requests
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 2
    sim = summary["simulator"]
    # every transport fault made the client retry, or (after the last retry) fail the call
    assert sim["retries"] + sim["transport_failures"] == faults.transport_faults
    # every judge fault was a reply the environment could not use
    assert sim["unusable_replies"] == faults.judge_faults
    assert sim["failed_turns"] >= 2 and sim["failures"] >= sim["failed_turns"]
    rows = lines(run_dir / "metrics.jsonl")
    assert [row["step"] for row in rows] == [0, 1, 2]
    assert metric_total(rows, "simulator/retries") == sim["retries"]
    assert metric_total(rows, "simulator/unusable_replies") == sim["unusable_replies"]
    assert metric_total(rows, "simulator/failed_turns") == sim["failed_turns"]


def test_no_failed_turn_has_a_reward_and_validation_leaves_failures_out(faulty_run):
    run_dir, result, _, _ = faulty_run
    assert result.returncode == 0
    failed_turns = 0
    for path in sorted((run_dir / "transcripts").glob("*.jsonl")):
        for episode in lines(path):
            for turn in episode["turns"]:
                if "simulator_error" in (turn.get("info") or {}):
                    failed_turns += 1
                    assert turn["reward"] is None, (path.name, episode["task_id"])
    assert failed_turns >= 2
    rows = {row["step"]: row for row in lines(run_dir / "metrics.jsonl")}
    for step in (0, 2):
        episodes = lines(run_dir / "transcripts" / f"val_step_{step:06d}.jsonl")
        ok = [e for e in episodes if e["status"] != "failed"]
        key = next(k for k in rows[step] if k.startswith("val-core/") and k.endswith("mean@1"))
        source = key.split("/")[1]
        assert rows[step][f"val-aux/{source}/failed_episodes"] == len(episodes) - len(ok)
        assert rows[step][key] == pytest.approx(sum(e["score"] for e in ok) / len(ok))
    assert rows[0][f"val-aux/{source}/failed_episodes"] >= 2  # the first six judge replies were unusable


def test_the_canary_key_is_nowhere(faulty_run):
    run_dir, result, faults, _ = faulty_run
    assert CANARY not in result.stdout and CANARY not in result.stderr
    leaked = [str(p.relative_to(run_dir)) for p in run_dir.rglob("*")
              if p.is_file() and CANARY.encode() in p.read_bytes()]
    assert not leaked, leaked
    transcripts = "".join(p.read_text() for p in (run_dir / "transcripts").glob("*.jsonl"))
    assert "your key is ***" in transcripts  # the echoing replies were there, scrubbed


def test_a_judge_that_is_never_usable_stops_the_run_with_status_3(tmp_path, tiny_model_dir):
    def never_usable(body):
        return reply("I cannot tell which details that covers.") if is_judge_request(body) else reply("Fine.")

    with OpenAIServer(default=never_usable) as server:
        recipe = tiny_recipe(
            tmp_path, tiny_model_dir, api_base=server.base_url,
            env={"IntentionGym": {"judge_retries": 1}},
            trainer={"total_training_steps": 10, "val_before_train": False, "test_freq": -1,
                     "max_steps_without_update": 2},
            guard={"enabled": False},  # its failure-spike rule would stop the run first (also exit 3)
        )
        result = run_userrl("run", str(recipe), "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 3, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "stopped" and "trainer.max_steps_without_update=2" in summary["error"]
    assert summary["steps"] == 2
    assert summary["simulator"]["failures"] >= 8 and summary["simulator"]["failed_turns"] >= 8
    rows = lines(tmp_path / "run" / "metrics.jsonl")
    assert all(row["simulator/failure_rate"] == 1.0 and row["simulator/errors"] >= 4 for row in rows)
    assert "sim_err 4" in result.stderr or "sim err" in result.stderr
    report = (tmp_path / "run" / "report.md").read_text()
    assert "stopped" in report


def test_resume_after_a_lost_checkpoint_keeps_one_line_per_step(tmp_path, tiny_model_dir):
    with OpenAIServer(default=lambda body: reply(JUDGE_VERDICT_NONE if is_judge_request(body) else "Fine.")) as server:
        recipe = tiny_recipe(tmp_path, tiny_model_dir, api_base=server.base_url,
                             trainer={"total_training_steps": 2, "val_before_train": False, "test_freq": -1,
                                      "save_freq": 1, "max_ckpt_to_keep": 2})
        first = run_userrl("run", str(recipe), "--run-dir", str(tmp_path / "run"))
        assert first.returncode == 0, first.stderr[-3000:]
        # as if the process died after logging step 2 and before its checkpoint was complete
        shutil.rmtree(tmp_path / "run" / "checkpoints" / "step_000002")
        resumed = run_userrl("run", str(recipe), "--run-dir", str(tmp_path / "run"), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = [row["step"] for row in lines(tmp_path / "run" / "metrics.jsonl")]
    assert steps == [1, 2]
    discarded = lines(tmp_path / "run" / "metrics.discarded.jsonl")
    assert [row["step"] for row in discarded] == [2]
