"""The OpenAI-compatible server, through the real `openai` client, over real HTTP on
127.0.0.1 (the synthetic world on replay models): completions, streams with usage,
presets as model names, feedback, metrics, sticky conversations."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from emafusion.nodes.resources import RouterResources, checked_presets
from emafusion.serve.app import create_app
from emafusion.serve.background import BackgroundServer
from emafusion.serve.settings import ServeSettings
from emafusion.stores.presets import Preset, PresetBook
from emafusion.stores.recordings import RecordSet
from tests import synthetic

PRESETS = PresetBook(
    {
        "default": Preset("default", {"escalation_threshold": 0.6}),
        # Operating points as an evaluation would write them: the cheap models, one call;
        # the strongest model, whatever it costs.
        "cheap": Preset("cheap", {"max_levels": 1, "models": ["tiny", "small"]}),
        "max": Preset("max", {"models": ["large"], "escalation_threshold": 0.9}),
    }
)


@pytest.fixture
def resources(synthetic_records: RecordSet) -> RouterResources:
    resources = synthetic.make_resources(synthetic_records)
    resources.presets = checked_presets(PRESETS)
    return resources


@pytest.fixture
def server(resources: RouterResources) -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(resources, ServeSettings())) as running:
        yield running


@pytest.fixture
def client(server: BackgroundServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_a_completion_names_the_answering_model_and_the_route(
    client: openai.OpenAI, synthetic_records: RecordSet
) -> None:
    record = synthetic_records.split("test")[0]
    reply = client.chat.completions.create(model="emafusion", messages=_user(record.query))
    info = reply.model_extra["emafusion"]  # type: ignore[index]
    assert reply.model == info["model"] == info["escalation_path"][-1]
    assert reply.model in synthetic.MODELS
    assert reply.choices[0].message.content == record.outcomes[reply.model].response
    assert reply.choices[0].finish_reason == "stop"
    assert reply.id == f"chatcmpl-{info['run_id']}"
    # Usage sums every model call: the synthetic recordings say 90 in, 10 out per call.
    calls = len(info["escalation_path"])
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (90 * calls, 10 * calls)
    assert info["cost_usd"] == pytest.approx(
        sum(record.outcomes[m].cost_usd or 0.0 for m in info["escalation_path"])
    )
    assert info["cost_estimated"] is False and info["usage_estimated"] is False
    assert info["preset"] == "default"
    assert set(info["confidences"]) == set(info["escalation_path"])


def test_a_stream_carries_the_answer_then_usage_and_routing(
    client: openai.OpenAI, synthetic_records: RecordSet
) -> None:
    record = synthetic_records.split("test")[1]
    plain = client.chat.completions.create(model="emafusion", messages=_user(record.query))
    chunks = list(
        client.chat.completions.create(
            model="emafusion",
            messages=_user(record.query),
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finish] == ["stop"]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.total_tokens == plain.usage.total_tokens  # type: ignore[union-attr]
    assert all(c.usage is None for c in chunks[:-1])
    info = last.model_extra["emafusion"]  # type: ignore[index]
    assert info["model"] == last.model == plain.model
    assert info["run_id"] != plain.model_extra["emafusion"]["run_id"]  # type: ignore[index]
    # Without include_usage there is no usage chunk; the finish chunk is the last one.
    bare = list(
        client.chat.completions.create(model="emafusion", messages=_user(record.query), stream=True)
    )
    assert bare[-1].choices[0].finish_reason == "stop" and bare[-1].usage is None
    assert "emafusion" in (bare[-1].model_extra or {})


def test_presets_are_model_names(client: openai.OpenAI, synthetic_records: RecordSet) -> None:
    listed = {m.id: m.model_extra["emafusion"] for m in client.models.list()}  # type: ignore[index]
    assert list(listed) == ["emafusion", "emafusion-cheap", "emafusion-max", *synthetic.MODELS]
    assert listed["emafusion-cheap"]["settings"] == {"max_levels": 1, "models": ["tiny", "small"]}
    assert listed["large"]["kind"] == "pool_model"
    queries = [r.query for r in synthetic_records.split("test")[:8]]
    cheap = [
        client.chat.completions.create(model="emafusion-cheap", messages=_user(q)) for q in queries
    ]
    best = [
        client.chat.completions.create(model="emafusion-max", messages=_user(q)) for q in queries
    ]
    for reply in cheap:
        info = reply.model_extra["emafusion"]  # type: ignore[index]
        assert info["preset"] == "cheap" and len(info["escalation_path"]) == 1
        assert reply.model in ("tiny", "small")
    assert {r.model for r in best} == {"large"}
    assert all(r.model_extra["emafusion"]["preset"] == "max" for r in best)  # type: ignore[index]
    # A pool model as the model name: the router restricted to that model.
    direct = client.chat.completions.create(model="mid", messages=_user(queries[0]))
    assert direct.model_extra["emafusion"]["escalation_path"] == ["mid"]  # type: ignore[index]
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="emafusion-nope", messages=_user(queries[0]))
    assert missing.value.body["code"] == "model_not_found"  # type: ignore[index]
    assert "emafusion-cheap" in missing.value.body["message"]  # type: ignore[index]


def test_request_controls_become_run_settings(
    client: openai.OpenAI, synthetic_records: RecordSet
) -> None:
    query = synthetic_records.split("test")[2].query
    only = client.chat.completions.create(
        model="emafusion",
        messages=_user(query),
        extra_body={"models": ["small", "mid"], "min_confidence": 1.0},
    )
    info = only.model_extra["emafusion"]  # type: ignore[index]
    assert set(info["escalation_path"]) <= {"small", "mid"}
    # No answer is ever certain: a threshold of 1 runs the plan out.
    assert info["reason"].startswith("exhausted"), info["reason"]
    easy = client.chat.completions.create(
        model="emafusion", messages=_user(query), extra_body={"min_confidence": 0.0}
    )
    assert easy.model_extra["emafusion"]["reason"] == "confident"  # type: ignore[index]
    budget = client.chat.completions.create(
        model="emafusion",
        messages=_user(query),
        extra_body={"max_cost_usd": 1.5e-4, "min_confidence": 1.0},
    )
    assert budget.model_extra["emafusion"]["cost_usd"] <= 1.5e-4  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as low:
        client.chat.completions.create(
            model="emafusion", messages=_user(query), extra_body={"max_cost_usd": 1e-9}
        )
    assert low.value.status_code == 400
    assert low.value.body["code"] == "budget_too_low"  # type: ignore[index]


def test_every_model_failing_is_a_502_listing_the_failures(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(model="emafusion", messages=_user("never recorded"))
    assert failed.value.status_code == 502
    error = failed.value.body
    assert error["type"] == "upstream_error" and error["code"] == "all_models_failed"  # type: ignore[index]
    assert {f["model"] for f in error["failures"]} == set(synthetic.MODELS)  # type: ignore[index]
    assert "no recording" in error["message"]  # type: ignore[index]
    with pytest.raises(openai.APIStatusError) as streamed:
        client.chat.completions.create(
            model="emafusion", messages=_user("never recorded"), stream=True
        )
    assert streamed.value.status_code == 502


def test_feedback_on_a_reply_is_ground_truth(
    client: openai.OpenAI,
    server: BackgroundServer,
    resources: RouterResources,
    synthetic_records: RecordSet,
) -> None:
    record = synthetic_records.split("test")[3]
    reply = client.chat.completions.create(model="emafusion", messages=_user(record.query))
    run_id = reply.model_extra["emafusion"]["run_id"]  # type: ignore[index]
    sent = httpx.post(f"{server.url}/v1/feedback", json={"run_id": run_id, "score": 0.0})
    assert sent.status_code == 200, sent.text
    body = sent.json()
    assert (body["run_id"], body["model"], body["score"]) == (run_id, reply.model, 0.0)
    stored = resources.memory.get(body["query_id"])
    assert stored is not None
    truth = stored.ground_truth[reply.model]
    assert truth.source == "user_feedback" and truth.score == 0.0
    unknown = httpx.post(f"{server.url}/v1/feedback", json={"run_id": "nope", "score": 1.0})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "run_not_found"
    wrong = httpx.post(
        f"{server.url}/v1/feedback", json={"run_id": run_id, "score": 1.0, "model": "gpt-9"}
    )
    assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "invalid_feedback"
    assert "did not answer" in wrong.json()["error"]["message"]
    for bad in ({"run_id": run_id, "score": 2}, {"run_id": run_id}, {"score": 1}):
        refused = httpx.post(f"{server.url}/v1/feedback", json=bad)
        assert refused.status_code == 400 and refused.json()["error"]["type"] == (
            "invalid_request_error"
        )


def test_metrics_count_requests_calls_cost_and_errors(
    client: openai.OpenAI, server: BackgroundServer, synthetic_records: RecordSet
) -> None:
    record = synthetic_records.split("test")[4]
    reply = client.chat.completions.create(model="emafusion", messages=_user(record.query))
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(model="emafusion", messages=_user("never recorded"))
    text = httpx.get(f"{server.url}/metrics").text
    assert 'emafusion_requests_total{endpoint="/v1/chat/completions",status="200"} 1.0' in text
    assert 'emafusion_requests_total{endpoint="/v1/chat/completions",status="502"} 1.0' in text
    assert 'emafusion_errors_total{code="all_models_failed"} 1.0' in text
    assert f'emafusion_model_calls_total{{model="{reply.model}",status="answered"}}' in text
    assert 'emafusion_model_calls_total{model="large",status="unavailable"} 1.0' in text
    assert f'emafusion_cost_usd_total{{model="{reply.model}"}}' in text
    assert "emafusion_request_seconds_bucket" in text
    assert "emafusion_router_overhead_seconds_count 2.0" in text
    assert "emafusion_escalations_total" in text
    health = httpx.get(f"{server.url}/healthz").json()
    assert health == {"status": "ok", "models": 4, "presets": ["cheap", "default", "max"]}


def test_a_pinned_model_that_fails_hands_the_conversation_on(
    client: openai.OpenAI, synthetic_records: RecordSet
) -> None:
    first = synthetic_records.split("test")[5]
    opened = client.chat.completions.create(
        model="emafusion", messages=_user(first.query), extra_body={"sticky": True}
    )
    sticky = opened.model_extra["emafusion"]["sticky"]  # type: ignore[index]
    assert sticky["pinned"] is None and sticky["conversation"]
    turn = [
        *_user(first.query),
        {"role": "assistant", "content": opened.choices[0].message.content or ""},
        {"role": "user", "content": "And why?"},
    ]
    # The next turn repeats the opening: the same conversation, pinned to its model. A
    # transcript has no recording, so the pinned model is unavailable and the thread is
    # re-routed over the pool (here every replay model is unavailable too).
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(
            model="emafusion", messages=turn, extra_body={"sticky": True}
        )
    info = failed.value.body["emafusion"]  # type: ignore[index]
    assert info["sticky"] == {
        "conversation": sticky["conversation"],
        "pinned": opened.model,
        "kept": False,
    }
    assert info["escalation_path"][0] == opened.model
    assert set(info["escalation_path"]) == set(synthetic.MODELS)
