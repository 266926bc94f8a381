"""End to end: function calling, structured output and logprobs through `berth serve`'s two APIs,
with the real engine (llguidance-constrained decoding) and the real SmolLM2 model, from the
`openai` and `dashscope` SDKs and LangChain. One deployment is shared by the module; answers are
short (small `max_tokens`, bounded schemas) so the file stays quick."""

import json

import jsonschema
import pytest

from conftest import SMOLLM
from test_gateway import MODEL, real_model_config

WEATHER_PARAMS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 24},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                      "parameters": WEATHER_PARAMS}},
    {"type": "function", "function": {"name": "get_time", "description": "Current time in a time zone",
                                      "parameters": {"type": "object", "properties": {
                                          "zone": {"type": "string", "enum": ["UTC", "CET", "JST"]}},
                                          "required": ["zone"], "additionalProperties": False}}},
]
ASK = [{"role": "user", "content": "What is the weather like in Paris today?"}]
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20},
                   "age": {"type": "integer", "minimum": 0, "maximum": 150}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
BIO = [{"role": "user", "content": "Alice is a 31 year old engineer from Lyon. Give her name and age."}]


@pytest.fixture(scope="module")
def smollm(request):
    from conftest import BerthServer

    assert SMOLLM.is_file(), f"{SMOLLM} missing: run scripts/fetch-models"
    s = BerthServer(real_model_config())
    request.addfinalizer(s.stop)
    r = s.api("POST", "/api/v1/deployments", json={"model_name": MODEL, "capacity": 1})
    assert r.status_code == 200, r.text
    s.wait_status(MODEL, "RUNNING", ready=1, timeout=180)
    return s


@pytest.fixture(scope="module")
def oai(smollm):
    from openai import OpenAI

    return OpenAI(base_url=smollm.base + "/compatible-mode/v1", api_key=smollm.key)


@pytest.fixture(scope="module")
def ds(smollm):
    import dashscope
    from dashscope import Generation

    dashscope.base_http_api_url = smollm.base + "/api/v1"
    dashscope.api_key = smollm.key
    return Generation


def weather_args(arguments: str) -> dict:
    args = json.loads(arguments)
    jsonschema.validate(args, WEATHER_PARAMS)
    return args


def test_openai_forced_call_then_the_follow_up_turn(oai):
    named = {"type": "function", "function": {"name": "get_weather"}}
    c = oai.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice=named,
                                    temperature=0, max_tokens=64)
    choice = c.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    weather_args(call.function.arguments)

    follow = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 18, "sky": "sunny"})},
    ]
    c = oai.chat.completions.create(model=MODEL, messages=follow, tools=TOOLS, tool_choice="none",
                                    temperature=0, max_tokens=32)
    assert c.choices[0].finish_reason in ("stop", "length")
    assert c.choices[0].message.content and not c.choices[0].message.tool_calls


def test_openai_required_call_streamed(oai):
    chunks = list(oai.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required",
                                              parallel_tool_calls=False, temperature=0, max_tokens=64,
                                              stream=True))
    deltas = [tc for ch in chunks if ch.choices for tc in (ch.choices[0].delta.tool_calls or [])]
    assert deltas, chunks
    calls: dict[int, dict] = {}
    for d in deltas:
        c = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
        c["id"] = c["id"] or d.id
        c["name"] += d.function.name or ""
        c["arguments"] += d.function.arguments or ""
    assert list(calls) == [0], "parallel_tool_calls=False gives one call"
    call = calls[0]
    assert call["id"].startswith("call_")
    assert call["name"] in ("get_weather", "get_time")
    args = json.loads(call["arguments"])
    jsonschema.validate(args, next(t["function"]["parameters"] for t in TOOLS
                                   if t["function"]["name"] == call["name"]))
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_dashscope_forced_call_whole_and_streamed(ds):
    named = {"type": "function", "function": {"name": "get_weather"}}
    r = ds.call(model=MODEL, messages=ASK, tools=TOOLS, tool_choice=named, result_format="message",
                temperature=0, max_tokens=64)
    assert r.status_code == 200, r
    choice = r.output.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call["function"]["name"] == "get_weather" and call["id"].startswith("call_") and call["index"] == 0
    weather_args(call["function"]["arguments"])

    events = list(ds.call(model=MODEL, messages=ASK, tools=TOOLS, tool_choice=named, result_format="message",
                          temperature=0, max_tokens=64, stream=True, incremental_output=True))
    assert all(e.status_code == 200 for e in events), events[-1]
    streamed = [tc for e in events for tc in (e.output.choices[0].message.get("tool_calls") or [])]
    assert [c["function"]["name"] for c in streamed] == ["get_weather"]
    assert weather_args(streamed[0]["function"]["arguments"]) == weather_args(call["function"]["arguments"])
    assert events[-1].output.choices[0].finish_reason == "tool_calls"

    follow = ASK + [
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "18 degrees celsius and sunny"},
    ]
    r = ds.call(model=MODEL, messages=follow, result_format="message", temperature=0, max_tokens=32)
    assert r.status_code == 200, r
    assert r.output.choices[0].message.content
    assert r.output.choices[0].finish_reason in ("stop", "length")


def test_json_schema_and_json_object_outputs(oai, ds):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "strict": True, "schema": PERSON}}
    c = oai.chat.completions.create(model=MODEL, messages=BIO, response_format=fmt, temperature=0, max_tokens=48)
    assert c.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(c.choices[0].message.content), PERSON)

    events = list(ds.call(model=MODEL, messages=BIO, response_format=fmt, result_format="message", temperature=0,
                          max_tokens=48, stream=True, incremental_output=True))
    text = "".join(e.output.choices[0].message.content for e in events)
    jsonschema.validate(json.loads(text), PERSON)

    r = ds.call(model=MODEL, messages=[{"role": "user", "content": "Describe a cat as JSON."}],
                response_format={"type": "json_object"}, result_format="message", temperature=0, max_tokens=48)
    assert r.status_code == 200, r
    if r.output.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.output.choices[0].message.content), dict)
    else:
        # Cut off by max_tokens: still the start of a JSON object.
        assert r.output.choices[0].message.content.startswith("{")


def check_logprobs(entries, top: int):
    assert entries
    for e in entries:
        assert e["logprob"] <= 0
        alts = e["top_logprobs"]
        assert len(alts) == top
        assert all(a["logprob"] <= 0 for a in alts)
        assert [a["logprob"] for a in alts] == sorted((a["logprob"] for a in alts), reverse=True)
        assert alts[0]["logprob"] >= e["logprob"] - 1e-4, "the most likely alternative is at least as likely"
        assert bytes(e["bytes"]).decode("utf-8", "replace") == e["token"] or "\ufffd" in e["token"]


def test_logprobs_in_both_apis(oai, ds):
    c = oai.chat.completions.create(model=MODEL, messages=BIO, temperature=0, max_tokens=8, logprobs=True,
                                    top_logprobs=3)
    content = c.choices[0].logprobs.content
    check_logprobs([e.model_dump() for e in content], 3)
    assert "".join(e.token for e in content) == c.choices[0].message.content
    # Greedy: the chosen token is the most likely one.
    assert all(abs(e.logprob - e.top_logprobs[0].logprob) < 1e-4 for e in content)

    chunks = list(oai.chat.completions.create(model=MODEL, messages=BIO, temperature=0, max_tokens=8,
                                              logprobs=True, top_logprobs=2, stream=True))
    streamed = [e.model_dump() for ch in chunks if ch.choices and ch.choices[0].logprobs
                for e in ch.choices[0].logprobs.content]
    check_logprobs(streamed, 2)

    r = ds.call(model=MODEL, messages=BIO, result_format="message", temperature=0, max_tokens=8, logprobs=True,
                top_logprobs=5)
    assert r.status_code == 200, r
    check_logprobs(r.output.choices[0].logprobs["content"], 5)
    events = list(ds.call(model=MODEL, messages=BIO, result_format="message", temperature=0, max_tokens=8,
                          logprobs=True, top_logprobs=1, stream=True, incremental_output=True))
    check_logprobs([e for ev in events for e in (ev.output.choices[0].get("logprobs") or {}).get("content", [])], 1)


def test_invalid_schema_and_unsupported_parameters_are_400s(oai, ds, smollm):
    from openai import BadRequestError

    bad = {"type": "json_schema", "json_schema": {"name": "x", "strict": True, "schema": {"type": "objekt"}}}
    with pytest.raises(BadRequestError) as e:
        oai.chat.completions.create(model=MODEL, messages=BIO, response_format=bad, max_tokens=8)
    assert e.value.body["param"] == "response_format.json_schema.schema"
    assert "objekt" in e.value.body["message"]
    with pytest.raises(BadRequestError) as e:
        oai.chat.completions.create(model=MODEL, messages=BIO, n=2, max_tokens=8)
    assert e.value.body["param"] == "n"
    with pytest.raises(BadRequestError) as e:
        oai.chat.completions.create(model=MODEL, messages=BIO, logprobs=True, top_logprobs=9, max_tokens=8)
    assert e.value.body["param"] == "top_logprobs"

    r = ds.call(model=MODEL, messages=BIO, response_format=bad, result_format="message", max_tokens=8)
    assert r.status_code == 400 and r.code == "InvalidParameter", r
    assert "response_format.json_schema.schema" in r.message
    r = ds.call(model=MODEL, messages=BIO, n=2, result_format="message", max_tokens=8)
    assert r.status_code == 400 and r.code == "InvalidParameter" and "n parameter" in r.message, r
    r = ds.call(model=MODEL, messages=BIO, tools=TOOLS, result_format="text", max_tokens=8)
    assert r.status_code == 400 and "result_format" in r.message, r
    # A tool_choice naming a function that is not offered.
    r = smollm.api("POST", "/compatible-mode/v1/chat/completions", json={
        "model": MODEL, "messages": BIO, "tools": TOOLS,
        "tool_choice": {"type": "function", "function": {"name": "launch"}}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tool_choice", r.text


def test_langchain_structured_output(smollm):
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel, Field

    class Person(BaseModel):
        name: str = Field(max_length=20)
        age: int = Field(ge=0, le=150)

    llm = ChatOpenAI(model=MODEL, base_url=smollm.base + "/compatible-mode/v1", api_key=smollm.key,
                     temperature=0, max_tokens=48)
    p = llm.with_structured_output(Person).invoke(BIO[0]["content"])
    assert isinstance(p, Person)
    assert p.name and 0 <= p.age <= 150
