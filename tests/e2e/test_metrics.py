"""End to end: the admin listener's Prometheus `/metrics` (parsed with the Prometheus Python
client's OpenMetrics parser), `/livez` and `/readyz`, and the workspace-scoped `/stats`, against
the real engine and SmolLM2, called through the real `dashscope` and `openai` SDKs."""

import subprocess
import time

import requests
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from conftest import BERTH_BIN, free_port, wait_for

MODEL = "smollm2-135m-instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
WS = "default"


def scrape(admin: str) -> dict:
    """Every sample of `/metrics`: {(sample name, frozenset(labels)): value}."""
    r = requests.get(admin + "/metrics", timeout=5)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0)


def test_metrics_count_exactly_the_calls_made(berth_factory):
    admin_port = free_port()
    admin = f"http://127.0.0.1:{admin_port}"
    s = berth_factory("[gateway]\nhold_secs = 120\n\n[reconciler]\nresync_secs = 0.5\n",
                      env={"BERTH_ADMIN_LISTEN": f"127.0.0.1:{admin_port}"})
    assert requests.get(admin + "/livez", timeout=5).status_code == 200
    wait_for(lambda: requests.get(admin + "/readyz", timeout=5).status_code == 200, what="readyz")
    # Tenants on the API port never see other workspaces' figures.
    assert s.api("GET", "/metrics").status_code == 404

    before = scrape(admin)
    assert any(name == "berth_build_info" for name, _ in before)

    import dashscope
    import openai

    r = s.api("POST", "/api/v1/deployments", json={"model_name": MODEL, "capacity": 1})
    assert r.status_code == 200, r.text
    client = openai.OpenAI(base_url=s.base + "/compatible-mode/v1", api_key=s.key)

    # 1: sent while the replica starts, so it is held, then answered.
    whole = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=16, temperature=0)
    s.wait_status(MODEL, "RUNNING", ready=1, timeout=60)
    # 2: streamed, with the usage chunk.
    stream_usage = None
    chunks = 0
    for chunk in client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=16, temperature=0,
                                                stream=True, stream_options={"include_usage": True}):
        if chunk.usage:
            stream_usage = chunk.usage
        if chunk.choices and chunk.choices[0].delta.content:
            chunks += 1
    assert stream_usage and chunks > 0
    # 3: the native API through the dashscope SDK.
    dashscope.base_http_api_url = s.base + "/api/v1"
    native = dashscope.Generation.call(model=MODEL, api_key=s.key, messages=QUESTION, result_format="message",
                                       max_tokens=16)
    assert native.status_code == 200, native
    # 4: a deployment that does not exist (counted without its made-up name).
    missing = requests.post(s.base + "/compatible-mode/v1/chat/completions", headers=s.headers, timeout=10,
                            json={"model": "no-such-deployment", "messages": QUESTION})
    assert missing.status_code == 404
    # 5: over an rpm_limit of 1, the second call in the minute is throttled.
    assert s.api("PUT", f"/api/v1/deployments/{MODEL}/update", json={"rpm_limit": 1}).status_code == 200
    time.sleep(1.5)  # the reconciler publishes the new limit to the gateway
    limited = [requests.post(s.base + "/compatible-mode/v1/chat/completions", headers=s.headers, timeout=60,
                             json={"model": MODEL, "messages": QUESTION, "max_tokens": 4}) for _ in range(2)]
    assert [r.status_code for r in limited] == [200, 429], limited[1].text
    limited_usage = limited[0].json()["usage"]
    after = scrape(admin)

    def rose(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    dep = {"workspace": WS, "deployment": MODEL}
    # Compatible: the held call, the stream and the rpm-limited pair's first call answered 200.
    assert rose("berth_requests_total", **dep, api="compatible", code="200") == 3
    assert rose("berth_requests_total", **dep, api="compatible", code="429") == 1
    assert rose("berth_requests_total", **dep, api="native", code="200") == 1
    assert rose("berth_requests_total", workspace=WS, deployment="", api="compatible", code="404") == 1
    assert rose("berth_throttled_total", **dep, limit="rpm") == 1
    assert rose("berth_request_duration_seconds_count", **dep, api="compatible") == 4
    assert rose("berth_request_duration_seconds_count", **dep, api="native") == 1
    assert rose("berth_time_to_first_token_seconds_count", **dep, api="compatible") == 1
    assert rose("berth_hold_seconds_count", **dep) == 1

    # Tokens: exactly what the answered calls reported.
    assert rose("berth_input_tokens_total", **dep) == (
        whole.usage.prompt_tokens + stream_usage.prompt_tokens + native.usage.input_tokens
        + limited_usage["prompt_tokens"])
    assert rose("berth_output_tokens_total", **dep) == (
        whole.usage.completion_tokens + stream_usage.completion_tokens + native.usage.output_tokens
        + limited_usage["completion_tokens"])

    # Replica and reconciler gauges.
    assert value(after, "berth_replicas", **dep, state="ready") == 1
    in_flight = [v for (n, labels), v in after.items() if n == "berth_replica_in_flight" and dict(labels)["deployment"] == MODEL]
    assert in_flight == [0]
    assert value(after, "berth_hold_queue_depth", **dep) == 0
    assert value(after, "berth_reconcile_pass_duration_seconds_count") > value(before, "berth_reconcile_pass_duration_seconds_count")
    assert rose("berth_store_write_duration_seconds_count", op="create_deployment") == 1

    # The tenant's view of the same calls, in its own workspace only.
    st = s.api("GET", f"/api/v1/deployments/{MODEL}/stats")
    assert st.status_code == 200, st.text
    out = st.json()["output"]
    assert out["interval_secs"] == 10 and len(out["points"]) == 30
    points = out["points"]
    assert sum(p["requests"] for p in points) == 5
    assert sum(p["throttled"] for p in points) == 1
    assert sum(p["output_tokens"] for p in points) == rose("berth_output_tokens_total", **dep)
    assert any(p["ttft_ms"] for p in points)
    other = subprocess.run([BERTH_BIN, "keys", "create", "--workspace", "team-b", "--data-dir", s.data_dir],
                           capture_output=True, text=True, check=True).stdout.strip()
    wait_for(lambda: requests.get(s.base + "/api/v1/deployments", timeout=5,
                                  headers={"Authorization": f"Bearer {other}"}).status_code == 200,
             timeout=10, what="the new key")
    foreign = requests.get(s.base + f"/api/v1/deployments/{MODEL}/stats", timeout=5,
                           headers={"Authorization": f"Bearer {other}"})
    assert foreign.status_code == 404, foreign.text
