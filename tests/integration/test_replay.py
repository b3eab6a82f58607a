"""ReplayChatModel: a real LangChain chat model answering from the recordings."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessageChunk, HumanMessage

from emafusion.stores.cost import COST_ESTIMATED, COST_RECORDED, estimate_usage
from emafusion.stores.pool import load_default_pool
from emafusion.stores.providers import NoRecordingError, ReplayChatModel, ReplayStore
from emafusion.stores.recordings import RecordSet


def _model(records: RecordSet, name: str) -> ReplayChatModel:
    spec = load_default_pool(records.name).get(name)
    return ReplayChatModel(model_name=name, prices=spec.prices, store=ReplayStore(records))


def test_invoke_by_record_id_uses_recorded_cost(routerbench: RecordSet) -> None:
    record = routerbench.records[10]
    model = _model(routerbench, "gpt-4-1106-preview")
    answer = model.invoke([HumanMessage(record.query, additional_kwargs={"record_id": record.id})])
    outcome = record.outcomes["gpt-4-1106-preview"]
    assert answer.content == outcome.response
    assert answer.response_metadata["cost_usd"] == outcome.cost_usd
    assert answer.response_metadata["cost_source"] == COST_RECORDED
    assert answer.usage_metadata is not None
    assert answer.usage_metadata["total_tokens"] == (
        answer.usage_metadata["input_tokens"] + answer.usage_metadata["output_tokens"]
    )


def test_invoke_by_query_text_estimates_cost_from_list_prices(mmlu_pro: RecordSet) -> None:
    record = mmlu_pro.records[3]
    model = _model(mmlu_pro, "gemini-1.5-pro-002")
    # Whitespace differences do not defeat the look-up.
    answer = model.invoke("  " + record.query.replace("\n", "\n ") + " ")
    outcome = record.outcomes["gemini-1.5-pro-002"]
    usage = estimate_usage(record.query, outcome.response or "")
    assert answer.content == outcome.response
    assert answer.response_metadata["cost_source"] == COST_ESTIMATED
    assert answer.response_metadata["usage_estimated"] is True
    expected = (usage.input_tokens * 1.25 + usage.output_tokens * 5.00) / 1e6
    assert answer.response_metadata["cost_usd"] == pytest.approx(expected)


class _Tokens(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


def test_stream_chunks_add_up_to_invoke(mmlu_pro: RecordSet) -> None:
    record = next(
        r for r in mmlu_pro.records if len(r.outcomes["mathstral-7B"].response or "") > 200
    )
    model = _model(mmlu_pro, "mathstral-7B")
    message = HumanMessage(record.query, additional_kwargs={"record_id": record.id})
    tokens = _Tokens()
    chunks = list(model.stream([message], config={"callbacks": [tokens]}))
    assert len(chunks) > 3
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    total = chunks[0]
    for chunk in chunks[1:]:
        total += chunk
    whole = model.invoke([message])
    assert total.content == whole.content
    assert total.usage_metadata == whole.usage_metadata
    assert total.response_metadata["cost_usd"] == whole.response_metadata["cost_usd"]
    assert "".join(tokens.tokens) == whole.content


async def test_astream_and_ainvoke(routerbench: RecordSet) -> None:
    record = routerbench.records[-1]
    model = _model(routerbench, "mistralai/mistral-7b-chat")
    message = HumanMessage(record.query, additional_kwargs={"record_id": record.id})
    parts = [chunk async for chunk in model.astream([message])]
    text = "".join(str(p.content) for p in parts)
    answer = await model.ainvoke([message])
    assert text == answer.content == record.outcomes["mistralai/mistral-7b-chat"].response


def test_missing_recording_is_a_typed_unavailable_error(mmlu_pro: RecordSet) -> None:
    record = next(r for r in mmlu_pro.records if "DeepSeek-Coder-V2" not in r.outcomes)
    model = _model(mmlu_pro, "DeepSeek-Coder-V2")
    with pytest.raises(NoRecordingError) as err:
        model.invoke([HumanMessage(record.query, additional_kwargs={"record_id": record.id})])
    assert err.value.model == "DeepSeek-Coder-V2"
    assert err.value.record_id == record.id
    with pytest.raises(NoRecordingError, match="no recording for query"):
        model.invoke("What is the airspeed of an unladen swallow?")
