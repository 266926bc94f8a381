"""Autoscaling and scale to zero, end to end: the real binary, the real model (SmolLM2), the
OpenAI SDK for every call, short timings from the config so one cycle takes about a minute."""

import json
import threading
import time

import requests

import re

from conftest import SMOLLM, free_port, replica_headers, replica_ports, stub_config, wait_for
from test_metrics import scrape, value

TIMINGS = """
[autoscaler]
tick_secs = 0.25
stable_window_secs = 3
panic_window_secs = 1

[gateway]
hold_secs = 60
"""

AUTOSCALING = {"min_capacity": 0, "max_capacity": 2, "target_inflight_per_replica": 2,
               "scale_down_delay_secs": 2, "scale_to_zero_after_secs": 6}


class Events:
    """Reads a deployment's event stream on a thread; keeps the autoscale events."""

    def __init__(self, s, name):
        self.autoscale: list[dict] = []
        self.ready = threading.Event()
        self._resp = requests.get(f"{s.base}/api/v1/deployments/{name}/stream", headers=s.headers,
                                  stream=True, timeout=(5, None))
        assert self._resp.status_code == 200, self._resp.text
        threading.Thread(target=self._read, daemon=True).start()
        assert self.ready.wait(10), "no first event"

    def _read(self):
        try:
            for line in self._resp.iter_lines():
                if not line.startswith(b"data:"):
                    continue
                self.ready.set()
                event = json.loads(line[5:])
                if event["type"] == "autoscale":
                    self.autoscale.append(event)
        except Exception:  # noqa: BLE001 - the stream was closed under the reader
            pass

    def close(self):
        self._resp.close()


def _stream(client, name, results, max_tokens):
    """One streamed call through the SDK: ok only if it ends with a finish reason and usage."""
    try:
        chunks = client.chat.completions.create(
            model=name, stream=True, max_tokens=max_tokens, temperature=0,
            stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "Count from one to fifty in words."}])
        finished = usage = False
        text = ""
        for chunk in chunks:
            if chunk.usage is not None and chunk.usage.completion_tokens > 0:
                usage = True
            for choice in chunk.choices:
                text += choice.delta.content or ""
                finished = finished or choice.finish_reason is not None
        results.append("ok" if finished and usage and text else f"truncated: {text!r}")
    except Exception as e:  # noqa: BLE001 - every failure is counted, whatever its kind
        results.append(f"error: {type(e).__name__}: {e}")


def test_zero_wake_burst_and_back_to_zero_without_a_failed_call(berth_factory):
    from openai import OpenAI

    assert SMOLLM.exists(), f"weights missing: {SMOLLM}"
    admin = f"http://127.0.0.1:{free_port()}"
    s = berth_factory("[reconciler]\nresync_secs = 0.5\ndrain_secs = 60\n" + TIMINGS,
                      env={"BERTH_ADMIN_LISTEN": admin.removeprefix("http://")})
    r = s.api("POST", "/api/v1/deployments", json={
        "model_name": "smollm2-135m-instruct", "capacity": 0, "suffix": "auto", "autoscaling": AUTOSCALING})
    assert r.status_code == 200, r.text
    name = r.json()["output"]["deployed_model"]
    assert r.json()["output"]["autoscaling"] == AUTOSCALING
    at_zero = s.wait_status(name, "RUNNING", ready=0)
    assert at_zero["capacity"] == 0 and "Scaled to zero" in at_zero["status_message"], at_zero
    assert s.replicas() == []
    events = Events(s, name)
    client = OpenAI(base_url=s.base + "/compatible-mode/v1", api_key=s.key, timeout=120, max_retries=0)
    results: list[str] = []

    # The first call wakes it, is held while the replica starts, and is answered.
    t0 = time.time()
    first = client.chat.completions.create(
        model=name, max_tokens=8, temperature=0,
        messages=[{"role": "user", "content": "What is the capital of France?"}])
    wake = time.time() - t0
    assert "Paris" in first.choices[0].message.content, first
    results.append("ok")
    woken = s.api("GET", f"/api/v1/deployments/{name}").json()["output"]
    assert woken["capacity"] >= 1 and woken["ready_capacity"] >= 1, woken
    assert "status_message" not in woken, woken

    # A burst of concurrent streams brings the second replica; streams keep coming until it
    # is ready and has taken some of them.
    threads: list[threading.Thread] = []
    burst_start = time.time()
    second_ready = None
    after_second = 0
    while time.time() - burst_start < 90 and after_second < 6:
        alive = [t for t in threads if t.is_alive()]
        for _ in range(6 - len(alive)):
            t = threading.Thread(target=_stream, args=(client, name, results, 48))
            t.start()
            threads.append(t)
            if second_ready is not None:
                after_second += 1
        if second_ready is None:
            d = s.api("GET", f"/api/v1/deployments/{name}").json()["output"]
            if d["ready_capacity"] == 2:
                second_ready = time.time() - burst_start
        time.sleep(0.2)
    for t in threads:
        t.join(timeout=120)
    assert second_ready is not None, f"no second replica within 90 s\n{s.logs()}"
    # Both replicas answered calls (each counts its own; asked before the scale-down, which
    # waits for the stable window and the delay).
    served = {}
    for port in replica_ports(s):
        text = requests.get(f"http://127.0.0.1:{port}/metrics", headers=replica_headers(port), timeout=5).text
        ok = re.search(r'berth_engine_requests_total\{outcome="ok"\} (\d+)', text)
        served[port] = int(ok.group(1)) if ok else 0
    assert len(served) == 2 and all(n > 0 for n in served.values()), served

    # Idle: back to one, then to zero, the last replica drained and stopped.
    idle_start = time.time()
    s.wait_status(name, "RUNNING", ready=0, timeout=60)
    to_zero = time.time() - idle_start
    final = s.api("GET", f"/api/v1/deployments/{name}").json()["output"]
    assert final["capacity"] == 0 and "Scaled to zero" in final["status_message"], final
    wait_for(lambda: s.replicas() == [], timeout=30, what="replicas stopped")
    time.sleep(0.5)
    events.close()

    bad = [r for r in results if r != "ok"]
    print(f"\nautoscaling: {len(results)} calls ({len(threads)} streams), {len(bad)} failed or truncated; "
          f"wake-from-zero call answered in {wake:.1f} s; second replica ready {second_ready:.1f} s "
          f"after the burst began; calls answered per replica {sorted(served.values())}; "
          f"back to zero {to_zero:.1f} s after the last call")
    assert bad == [] and len(results) == len(threads) + 1, bad
    moves = [(e["from_capacity"], e["to_capacity"], e["reason"]) for e in events.autoscale]
    print(f"autoscale events: {moves}")
    assert moves[0] == (0, 1, "wake"), moves
    assert any(to == 2 and frm < 2 for frm, to, _ in moves), moves
    assert moves[-1][1] == 0 and moves[-1][2] == "idle", moves
    # The same decisions as metrics.
    samples = scrape(admin)
    labels = {"workspace": "default", "deployment": name}
    for direction in ("up", "down"):
        counted = value(samples, "berth_autoscale_decisions_total", direction=direction, **labels)
        assert counted == sum(e["direction"] == direction for e in events.autoscale), (direction, counted)
    assert value(samples, "berth_autoscale_target_capacity", **labels) == 0
    assert (("berth_autoscale_target_capacity", frozenset(labels.items())) in samples)
    up = next(e for e in events.autoscale if e["to_capacity"] == 2)
    assert up["direction"] == "up" and up["in_flight"] + up["queued"] >= 3, up
    assert up["panic_avg"] > 2 or up["stable_avg"] > 2, up


def test_a_hold_that_ends_without_a_replica_says_when_to_retry_from_the_measured_start(berth_factory):
    """Stub replicas that take 1.5 s to start, a hold of 0.3 s: the call that wakes the
    deployment is answered 503 (not held forever) but wakes it; once a start has been measured,
    `Retry-After` is that start time, not the default."""
    s = berth_factory(stub_config(start_delay_ms=1500, extra="""
[autoscaler]
tick_secs = 0.25
stable_window_secs = 1
panic_window_secs = 0.5

[gateway]
hold_secs = 0.3
"""))
    r = s.api("POST", "/api/v1/deployments", json={
        "model_name": "stub-model", "capacity": 0, "autoscaling": {
            "max_capacity": 1, "scale_down_delay_secs": 0, "scale_to_zero_after_secs": 2}})
    assert r.status_code == 200, r.text
    name = r.json()["output"]["deployed_model"]
    s.wait_status(name, "RUNNING", ready=0)

    def call():
        return requests.post(s.base + "/compatible-mode/v1/chat/completions", headers=s.headers, timeout=30,
                             json={"model": name, "messages": [{"role": "user", "content": "hi"}]})

    cold = call()
    assert cold.status_code == 503, cold.text
    assert cold.headers["Retry-After"] == "5", cold.headers  # nothing measured yet: the default
    s.wait_status(name, "RUNNING", ready=1, timeout=30)
    assert call().status_code == 200
    s.wait_status(name, "RUNNING", ready=0, timeout=30)
    again = call()
    assert again.status_code == 503, again.text
    # A start of 1.5 s and a bit (spawn, the next readiness probe), rounded up.
    assert again.headers["Retry-After"] in ("2", "3"), again.headers
