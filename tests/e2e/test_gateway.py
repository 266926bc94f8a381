"""End to end: calling deployed models through `berth serve`'s gateway, with the real engine and
the real SmolLM2 model, from the `dashscope` and `openai` Python SDKs."""

import concurrent.futures
import os
import re
import subprocess
import time

import pytest
import requests

from conftest import BERTH_BIN, SMOLLM, replica_headers, replica_ports, stub_config, wait_for

MODEL = "smollm2-135m-instruct"
QUESTION = [
    {"role": "system", "content": "You are a helpful assistant. Answer in one short sentence."},
    {"role": "user", "content": "What is the capital of France?"},
]


def requests_served(port: int) -> int:
    """Completion requests a replica counted, from its Prometheus `/metrics`."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", headers=replica_headers(port), timeout=5).text
    total = 0
    for line in text.splitlines():
        m = re.match(r'^(berth_engine_requests_total\{outcome="ok"\}|berth_stub_requests_total)\s+(\d+)', line)
        if m:
            total += int(m.group(2))
    return total


def real_model_config(hold_secs: float = 60) -> str:
    """The default catalog (the real engine and SmolLM2), with a hold long enough for a replica start."""
    return f"[gateway]\nhold_secs = {hold_secs}\n\n[reconciler]\nresync_secs = 0.5\n"


@pytest.fixture(scope="module")
def smollm(request):
    """One `berth serve` with a running SmolLM2 deployment of capacity 1, shared by the SDK tests."""
    from conftest import BerthServer

    assert SMOLLM.is_file(), f"{SMOLLM} missing: run scripts/fetch-models"
    s = BerthServer(real_model_config())
    request.addfinalizer(s.stop)
    r = s.api("POST", "/api/v1/deployments", json={"model_name": MODEL, "capacity": 1})
    assert r.status_code == 200, r.text
    s.wait_status(MODEL, "RUNNING", ready=1, timeout=180)
    return s


def test_dashscope_sdk_generation_in_both_result_formats(smollm):
    import dashscope
    from dashscope import Generation

    dashscope.base_http_api_url = smollm.base + "/api/v1"
    dashscope.api_key = smollm.key

    r = Generation.call(model=MODEL, messages=QUESTION, result_format="message", temperature=0.1, max_tokens=32)
    assert r.status_code == 200, r
    assert r.request_id
    choice = r.output.choices[0]
    assert "Paris" in choice.message.content
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens

    r = Generation.call(model=MODEL, messages=QUESTION, result_format="text", temperature=0.1, max_tokens=32)
    assert r.status_code == 200, r
    assert "Paris" in r.output.text
    assert r.output.finish_reason in ("stop", "length")

    r = Generation.call(model=MODEL, prompt="What is the capital of France? Answer in one word.", max_tokens=16)
    assert r.status_code == 200, r
    assert r.output.text


@pytest.mark.parametrize("incremental", [True, False])
def test_dashscope_sdk_streaming(smollm, incremental):
    import dashscope
    from dashscope import Generation

    dashscope.base_http_api_url = smollm.base + "/api/v1"
    dashscope.api_key = smollm.key
    events = list(Generation.call(model=MODEL, messages=QUESTION, result_format="message", stream=True,
                                  incremental_output=incremental, temperature=0.1, max_tokens=32))
    assert len(events) >= 2
    assert all(e.status_code == 200 for e in events), events[-1]
    texts = [e.output.choices[0].message.content for e in events]
    reasons = [e.output.choices[0].finish_reason for e in events]
    assert all(r == "null" for r in reasons[:-1]) and reasons[-1] in ("stop", "length")
    full = "".join(texts) if incremental else texts[-1]
    if not incremental:
        # Each event repeats the text so far.
        assert all(texts[i + 1].startswith(texts[i]) for i in range(len(texts) - 1))
    assert "Paris" in full
    outs = [e.usage.output_tokens for e in events]
    assert outs == sorted(outs) and outs[0] > 0, "usage is cumulative"
    last = events[-1].usage
    assert last.input_tokens > 0 and last.total_tokens == last.input_tokens + last.output_tokens
    # The prompt's size is known from the first event on, as upstream reports it.
    assert all(e.usage.input_tokens == last.input_tokens for e in events), [e.usage for e in events]
    assert all(e.usage.total_tokens == e.usage.input_tokens + e.usage.output_tokens for e in events)
    assert len({e.request_id for e in events}) == 1


def test_openai_sdk_chat_streaming_and_models(smollm):
    from openai import OpenAI

    client = OpenAI(base_url=smollm.base + "/compatible-mode/v1", api_key=smollm.key)
    c = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0.1, max_tokens=32)
    assert "Paris" in c.choices[0].message.content
    assert c.usage.prompt_tokens > 0 and c.usage.completion_tokens > 0

    chunks = list(client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0.1, max_tokens=32,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert "Paris" in text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0

    # Without include_usage the client gets no usage chunk (the gateway still counts tokens).
    chunks = list(client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8, stream=True))
    assert all(ch.usage is None for ch in chunks)

    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    # `created` is the deployment's creation time.
    assert abs(models.data[0].created - time.time()) < 3600

    from openai import AuthenticationError, NotFoundError
    with pytest.raises(NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=QUESTION)
    assert e.value.body["code"] == "model_not_found"
    bad = OpenAI(base_url=smollm.base + "/compatible-mode/v1", api_key="sk-wrong")
    with pytest.raises(AuthenticationError) as e:
        bad.chat.completions.create(model=MODEL, messages=QUESTION)
    assert e.value.body["code"] == "invalid_api_key"


def test_native_http_framing_and_validation(smollm):
    headers = {**smollm.headers, "X-DashScope-SSE": "enable"}
    body = {"model": MODEL, "input": {"messages": QUESTION}, "parameters": {"max_tokens": 8, "incremental_output": True}}
    r = requests.post(smollm.base + "/api/v1/services/aigc/text-generation/generation", headers=headers, json=body,
                      timeout=60)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = r.text.split("\n\n")[:-1]
    assert events
    for i, ev in enumerate(events, 1):
        lines = ev.split("\n")
        assert lines[:3] == [f"id:{i}", "event:result", ":HTTP_STATUS/200"], ev
        assert lines[3].startswith("data:{")
    bad = {"model": MODEL, "input": {}}
    r = requests.post(smollm.base + "/api/v1/services/aigc/text-generation/generation", headers=smollm.headers,
                      json=bad, timeout=10)
    assert r.status_code == 400
    assert r.json()["code"] == "InvalidParameter"
    assert r.json()["message"] == 'Either "prompt" or "messages" must exist and cannot both be none'


def test_thirty_concurrent_requests_spread_over_three_replicas(berth_factory):
    s = berth_factory(real_model_config())
    s.api("POST", "/api/v1/deployments", json={"model_name": MODEL, "capacity": 3})
    s.wait_status(MODEL, "RUNNING", ready=3, timeout=240)
    ports = replica_ports(s)
    assert len(ports) == 3
    before = {p: requests_served(p) for p in ports}

    def call(i):
        return requests.post(s.base + "/compatible-mode/v1/chat/completions", headers=s.headers, timeout=180, json={
            "model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": f"Count to {i}."}]})

    with concurrent.futures.ThreadPoolExecutor(30) as pool:
        replies = list(pool.map(call, range(30)))
    assert [r.status_code for r in replies] == [200] * 30, [r.text for r in replies if r.status_code != 200]
    served = {p: requests_served(p) - before[p] for p in ports}
    assert sum(served.values()) == 30, served
    assert all(n >= 5 for n in served.values()), f"not spread over all replicas: {served}"


def test_a_request_while_the_deployment_starts_is_held_then_answered(berth_factory):
    from openai import OpenAI

    s = berth_factory(real_model_config())
    r = s.api("POST", "/api/v1/deployments", json={"model_name": MODEL, "capacity": 1})
    assert r.json()["output"]["status"] == "PENDING"
    client = OpenAI(base_url=s.base + "/compatible-mode/v1", api_key=s.key, timeout=120)
    c = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8)
    assert c.choices[0].message.content
    assert s.api("GET", f"/api/v1/deployments/{MODEL}").json()["output"]["ready_capacity"] == 1


def test_routing_errors(berth_factory):
    s = berth_factory(stub_config(start_delay_ms=100, extra="") + "\n[gateway]\nhold_secs = 1\n")
    native = s.base + "/api/v1/services/aigc/text-generation/generation"
    call = {"model": "stub-model", "input": {"prompt": "hi"}}
    s.api("POST", "/api/v1/deployments", json={"model_name": "stub-model", "capacity": 1})
    s.wait_status("stub-model", "RUNNING", ready=1)
    assert requests.post(native, headers=s.headers, json=call, timeout=10).status_code == 200

    # A key of another workspace: 404, exactly like a missing deployment.
    data = os.path.join(s.dir.name, "data")
    other = subprocess.run([BERTH_BIN, "keys", "create", "--workspace", "team-b", "--data-dir", data],
                           capture_output=True, text=True, check=True).stdout.strip()
    # (A 404 `requests.Response` is falsy, so poll by status code.)
    other_call = lambda: requests.post(native, headers={"Authorization": f"Bearer {other}"}, json=call, timeout=10)
    last = {}

    def key_usable():
        last["r"] = other_call()
        return last["r"].status_code != 401

    try:
        wait_for(key_usable, timeout=20, what="new key usable")
    except AssertionError:
        raise AssertionError(f"new key still refused: {last['r'].status_code} {last['r'].text}\n{s.logs()}")
    r = other_call()
    assert r.status_code == 404 and r.json()["code"] == "ModelNotFound"

    # Over rpm: 429 with Retry-After, in both envelopes.
    s.api("PUT", "/api/v1/deployments/stub-model/update", json={"rpm_limit": 2})
    codes = []
    for _ in range(6):
        r = requests.post(native, headers=s.headers, json=call, timeout=10)
        codes.append(r.status_code)
        if r.status_code == 429:
            assert r.json()["code"] == "Throttling.RateQuota" and "Retry-After" in r.headers
    assert 429 in codes, codes
    r = requests.post(s.base + "/compatible-mode/v1/chat/completions", headers=s.headers, timeout=10,
                      json={"model": "stub-model", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
    assert "Retry-After" in r.headers

    # Capacity 0: 503 after the hold time.
    s.api("POST", "/api/v1/deployments", json={"model_name": "stub-model", "capacity": 0, "suffix": "zero"})
    s.wait_status("stub-model-zero", "RUNNING", ready=0)
    t0 = time.time()
    r = requests.post(native, headers=s.headers, json={**call, "model": "stub-model-zero"}, timeout=10)
    assert r.status_code == 503 and r.json()["code"] == "ModelUnavailable", r.text
    assert "Retry-After" in r.headers
    assert 0.9 <= time.time() - t0 < 5

    # Deleted: 404.
    s.api("DELETE", "/api/v1/deployments/stub-model")
    wait_for(lambda: s.api("GET", "/api/v1/deployments/stub-model").status_code == 404, what="deleted")
    r = requests.post(native, headers=s.headers, json=call, timeout=10)
    assert r.status_code == 404 and r.json()["code"] == "ModelNotFound"
