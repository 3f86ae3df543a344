"""The offline ``local`` simulator: the real all-MiniLM-L6-v2 from PyPI, its judge, its replies,
batching of concurrent requests, and an IntentionGym episode driven through it."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from userrl_core.config.schema import SimulatorConfig
from userrl_core.errors import MissingRequirementError
from userrl_core.types import Action, SimulatorError, SimulatorRequest, StepStatus, Task
from userrl_plugins.simulators.embeddings import SentenceEncoder
from userrl_plugins.simulators.local_simulator import LocalSimulator, build_local_simulator

DETAILS = [
    {"number": 1, "description": "Type of diabetes", "importance": 3,
     "inquiry": "Could you tell me which type of diabetes you are interested in?",
     "options": ["Type 1", "Type 2", "Gestational"]},
    {"number": 2, "description": "Aspect of treatment", "importance": 2,
     "inquiry": "Are you looking for specific aspects of diabetes treatment such as medication, lifestyle changes, "
                "or technology?",
     "options": ["Medication", "Lifestyle changes", "Technology"]},
    {"number": 3, "description": "Source of research", "importance": 2,
     "inquiry": "Do you prefer research from any particular source, like academic journals, clinical trials, or "
                "specific medical institutions?",
     "options": ["Academic journals", "Clinical trials", "Medical institutions"]},
]
TASK = "Find the latest research on diabetes treatment."


def context(question: str, *, turn: int = 1, seed: int = 0, details=None, **extra) -> dict:
    return {"env": "IntentionGym", "task": TASK, "question": question, "turn": turn, "seed": seed,
            "details": DETAILS if details is None else details, **extra}


def judge(question: str, **kw) -> SimulatorRequest:
    return SimulatorRequest(purpose="judge", messages=[], context=context(question, **kw), response_format="json")


def ask(question: str, **kw) -> SimulatorRequest:
    return SimulatorRequest(purpose="reply", messages=[], context=context(question, **kw))


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder()


@pytest.fixture
def sim(encoder):
    return LocalSimulator(SimulatorConfig(name="local"), encoder=encoder)


def test_embeddings_are_unit_vectors_that_rank_meaning(encoder):
    vectors = encoder.encode(["What is your budget?", "How much money can you spend?", "The cat sleeps on the sofa."])
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    related, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert related > 0.5 > unrelated


def test_padding_does_not_change_a_sentence_vector(encoder):
    alone = encoder.encode(["Which city?"])[0]
    batched = encoder.encode(["Which city?", "A much longer sentence that forces padding of the short one."])[0]
    assert np.allclose(alone, batched, atol=1e-5)


def test_judge_covers_the_detail_its_inquiry_targets(sim):
    for detail in DETAILS:
        verdict = json.loads(run(sim.complete(judge(detail["inquiry"]))).text)
        assert detail["number"] in verdict["covered"]


def test_judge_covers_nothing_for_an_off_topic_question(sim):
    verdict = json.loads(run(sim.complete(judge("What is your favourite football team?"))).text)
    assert verdict == {"covered": []}


def test_threshold_is_respected(encoder):
    strict = LocalSimulator(SimulatorConfig(name="local", local={"judge_threshold": 0.99}), encoder=encoder)
    lenient = LocalSimulator(SimulatorConfig(name="local", local={"judge_threshold": -1.0, "judge_margin": None}),
                             encoder=encoder)
    question = "Which kind of diabetes do you mean?"
    assert json.loads(run(strict.complete(judge(question))).text)["covered"] == []
    assert sorted(json.loads(run(lenient.complete(judge(question))).text)["covered"]) == [1, 2, 3]


def test_margin_keeps_look_alike_siblings_out(encoder):
    """Detail 1's inquiry also resembles detail 2's (both mention diabetes); the relative margin
    credits only the detail the question is closest to."""
    without = LocalSimulator(SimulatorConfig(name="local", local={"judge_margin": None}), encoder=encoder)
    with_margin = LocalSimulator(SimulatorConfig(name="local"), encoder=encoder)
    question = DETAILS[0]["inquiry"]
    assert len(json.loads(run(without.complete(judge(question))).text)["covered"]) > 1
    assert json.loads(run(with_margin.complete(judge(question))).text)["covered"] == [1]


def test_bad_margin_is_a_config_error(encoder):
    from userrl_core.errors import ConfigError

    with pytest.raises(ConfigError, match="simulator.local.judge_margin"):
        LocalSimulator(SimulatorConfig(name="local", local={"judge_margin": "wide"}), encoder=encoder)


def test_reply_states_an_option_of_the_matched_detail_only(sim):
    text = run(sim.complete(ask(DETAILS[0]["inquiry"]))).text
    assert any(option in text for option in DETAILS[0]["options"])
    for other in DETAILS[1:]:
        assert not any(option in text for option in other["options"])


def test_reply_is_deterministic_for_a_seed_and_varies_across_seeds(encoder):
    first = LocalSimulator(SimulatorConfig(name="local", seed=5), encoder=encoder)
    second = LocalSimulator(SimulatorConfig(name="local", seed=5), encoder=encoder)
    request = ask(DETAILS[0]["inquiry"], seed=11)
    assert run(first.complete(request)).text == run(second.complete(request)).text
    chosen = {next(o for o in DETAILS[0]["options"] if o in run(first.complete(ask(DETAILS[0]["inquiry"], seed=s))).text)
              for s in range(12)}
    assert len(chosen) > 1


def test_reply_redirects_politely_when_nothing_matches(sim):
    text = run(sim.complete(ask("What is your favourite football team?"))).text
    assert text and "?" in text
    assert not any(option in text for d in DETAILS for option in d["options"])


def test_request_without_structured_context_fails_and_is_counted(sim):
    request = SimulatorRequest(purpose="reply", messages=[{"role": "user", "content": "hello"}])
    with pytest.raises(SimulatorError, match="structured context") as info:
        run(sim.complete(request))
    assert info.value.simulator == "local"
    stats = sim.stats()
    assert stats["calls"] == 1 and stats["failures"] == 1
    assert "structured context" in sim.last_error


def test_malformed_detail_names_its_index(sim):
    with pytest.raises(SimulatorError, match=r"details\[1\]"):
        run(sim.complete(judge("Which type?", details=[DETAILS[0], {"description": "no number"}])))


def test_no_remaining_details_covers_nothing(sim):
    assert json.loads(run(sim.complete(judge("Anything else?", details=[]))).text) == {"covered": []}


def test_concurrent_requests_are_batched_and_cached(sim):
    questions = [f"Question number {i} about which type of diabetes?" for i in range(24)]

    async def many():
        return await asyncio.gather(*(sim.complete(judge(q)) for q in questions))

    results = run(many())
    assert len(results) == 24
    cache = sim.embeddings
    assert cache.encoded == 24 + 2 * len(DETAILS)  # every text once: questions, descriptions, inquiries
    assert cache.batches < 24 / 2
    before = cache.encoded
    run(many())
    assert cache.encoded == before  # all cached
    assert sim.stats()["calls"] == 48 and sim.stats()["failures"] == 0


def test_judge_answers_in_userrls_format_with_the_labels_it_was_given(sim):
    from userrl_plugins.intentiongym.judge import parse_judge_reply

    zero_based = [dict(d, number=d["number"] - 1) for d in DETAILS]
    on_topic = run(sim.complete(judge(DETAILS[1]["inquiry"], details=zero_based, judge_format="userrl"))).text
    verdict = json.loads(on_topic)
    assert set(verdict) == {"analysis", "is_task_related", "covered_detail_indices"}
    assert verdict["is_task_related"] is True and verdict["covered_detail_indices"] == [1]
    assert parse_judge_reply(on_topic, {0, 1, 2}).covered == [1]  # what IntentionGym reads back
    off_topic = json.loads(run(sim.complete(
        judge("What is your favourite football team?", details=zero_based, judge_format="userrl"))).text)
    assert off_topic["is_task_related"] is False and off_topic["covered_detail_indices"] == []


def test_unknown_judge_format_fails_clearly(sim):
    with pytest.raises(SimulatorError, match="judge_format 'xml'"):
        run(sim.complete(judge("Which type?", judge_format="xml")))


def test_bad_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(MissingRequirementError, match="simulator.local.embedding_model"):
        build_local_simulator(config=SimulatorConfig(name="local", local={"embedding_model": str(tmp_path)}))


def test_registered_factory_builds_the_local_simulator():
    from userrl_core.plugins import get_plugin_manager
    from userrl_core.registry import Kind

    factory = get_plugin_manager().registry.get(Kind.SIMULATOR, "local")
    sim = factory(config=SimulatorConfig(name="local"))
    assert json.loads(run(sim.complete(judge(DETAILS[1]["inquiry"]))).text)["covered"][0] == 2


def test_intentiongym_episode_with_the_local_simulator(sim):
    from userrl_plugins.intentiongym.env import make_env
    from userrl_plugins.intentiongym.tasks import default_bank

    spec = next(t for t in default_bank()._tasks.values() if len(t.missing_details) >= 2)
    task = Task(id=spec.id, env_name="IntentionGym", data_source="interact_intention", prompt=[],
                payload={"id": spec.id})
    env = make_env(task=task, simulator=sim, settings={}, seed=7)

    async def episode():
        await env.reset()
        results = []
        for detail in spec.missing_details:
            results.append(await env.step(Action(choice="action", content=detail.inquiry)))
            if results[-1].done:
                break
        return results

    results = run(episode())
    assert all(r.status == StepStatus.OK and r.reward is not None for r in results)
    assert results[0].reward > 0
    assert env.metrics()["coverage"] == 1.0
    assert any(option in results[0].observation for option in spec.missing_details[0].options)
