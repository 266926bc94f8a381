"""End-to-end tests of `berth engine` with the real SmolLM2-135M model.

Run (after `cargo build -p berth` and `scripts/fetch-models`):

    python -m pytest tests/e2e/test_engine.py -v

BERTH_BIN (default target/debug/berth) and BERTH_MODELS_DIR (default models) locate the
binary and the GGUF files. Missing ones fail the tests; they are never skipped.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import openai
import pytest
import requests

BERTH_BIN = os.environ.get("BERTH_BIN", "target/debug/berth")
MODELS_DIR = os.environ.get("BERTH_MODELS_DIR", "models")
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
ALIAS = "smollm2-test"
FRANCE = "What is the capital of France?"


# ---------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_path() -> str:
    path = Path(MODELS_DIR) / MODEL_FILE
    if not path.is_file():
        pytest.fail(f"{path} is missing: run scripts/fetch-models first")
    return str(path)


class Engine:
    """One `berth engine` process on a free port, its log in a temp file."""

    def __init__(self, *extra: str):
        if not Path(BERTH_BIN).is_file():
            pytest.fail(f"{BERTH_BIN} is missing: run `cargo build -p berth` first")
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="berth-engine-", suffix=".log", delete=False)
        # One llama.cpp thread: tests must not depend on having idle cores (OpenMP workers
        # spin-wait and crawl when the machine is busy, e.g. with a parallel cargo build).
        cmd = [BERTH_BIN, "engine", "--model", model_path(), "--port", str(self.port),
               "--threads", "1", *extra]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)

    def health(self) -> int | None:
        try:
            return requests.get(self.base + "/health", timeout=1).status_code
        except requests.RequestException:
            return None

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"engine exited with {self.proc.returncode}:\n{self.logs()}")
            if self.health() == 200:
                return
            time.sleep(0.02)
        pytest.fail(f"engine not ready after {timeout}s:\n{self.logs()}")

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base + "/v1", api_key="unused", max_retries=0,
                             timeout=60)

    def metrics(self) -> dict[str, float]:
        text = requests.get(self.base + "/metrics", timeout=5).text
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def logs(self) -> str:
        return Path(self.log.name).read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        os.unlink(self.log.name)


@pytest.fixture(scope="module")
def engine():
    e = Engine("--alias", ALIAS, "--parallel", "4", "--ctx", "2048")
    e.wait_ready()
    yield e
    e.stop()
    assert e.proc.returncode == 0, e.logs()


@pytest.fixture(scope="module")
def one_slot():
    """--parallel 1 with a queue of one: for cancellation and admission tests."""
    e = Engine("--parallel", "1", "--queue", "1", "--ctx", "2048")
    e.wait_ready()
    yield e
    e.stop()


def chat(client: openai.OpenAI, question: str, **kw):
    return client.chat.completions.create(
        model=ALIAS, messages=[{"role": "user", "content": question}], temperature=0, **kw)


class RawStream:
    """A streamed request on its own connection (http.client: no pooling, no read-ahead), so a
    test controls exactly when the client goes away."""

    def __init__(self, e: Engine, path: str, body: dict):
        self.conn = http.client.HTTPConnection("127.0.0.1", e.port, timeout=60)
        self.conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        self.resp = self.conn.getresponse()
        self.status = self.resp.status

    def lines(self):
        """Non-empty lines as they arrive, until the server ends the stream."""
        while True:
            line = self.resp.readline()
            if not line:
                return
            if line.strip():
                yield line.strip()

    def close(self) -> None:
        self.conn.sock.shutdown(socket.SHUT_RDWR)
        self.conn.close()


def long_stream(e: Engine, max_tokens: int = 1500) -> RawStream:
    """A raw completion that keeps counting for a long time (greedy)."""
    s = RawStream(e, "/v1/completions", {
        "prompt": "1, 2, 3, 4, 5, 6, 7, 8,", "max_tokens": max_tokens, "temperature": 0,
        "stream": True})
    assert s.status == 200, s.resp.read()
    return s


# ---------------------------------------------------------------------------- readiness


def test_health_goes_503_then_200():
    e = Engine()
    try:
        seen = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and 200 not in seen:
            code = e.health()
            if code is not None and (not seen or seen[-1] != code):
                seen.append(code)
            if e.proc.poll() is not None:
                pytest.fail(e.logs())
            time.sleep(0.005)
        assert seen and seen[0] == 503, f"first answer should be 503 while loading: {seen}"
        assert seen[-1] == 200, f"never became ready: {seen}\n{e.logs()}"
        assert seen == [503, 200]
        body = requests.get(e.base + "/health", timeout=5).json()
        assert body == {"status": "ok"}
    finally:
        e.stop()
    assert e.proc.returncode == 0


def test_models_lists_the_alias(engine):
    models = engine.client().models.list()
    assert [m.id for m in models.data] == [ALIAS]


# ---------------------------------------------------------------------------- answers


def test_chat_greedy_answer_contains_paris(engine):
    r = chat(engine.client(), FRANCE, max_tokens=48)
    answer = r.choices[0].message.content
    assert "Paris" in answer, answer
    assert r.object == "chat.completion"
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.role == "assistant"
    assert r.model == ALIAS
    assert r.usage.prompt_tokens > 5
    assert r.usage.completion_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_stream_contains_paris_with_usage(engine):
    stream = chat(engine.client(), FRANCE, max_tokens=48, stream=True,
                  stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text, text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # Same request without streaming: same greedy text, same token counts.
    whole = chat(engine.client(), FRANCE, max_tokens=48)
    assert whole.choices[0].message.content == text
    assert whole.usage.completion_tokens == usage.completion_tokens
    assert whole.usage.prompt_tokens == usage.prompt_tokens


def test_continuous_usage_stats_give_running_usage_on_every_chunk(engine):
    stream = chat(engine.client(), FRANCE, max_tokens=16, stream=True,
                  stream_options={"include_usage": True, "continuous_usage_stats": True})
    chunks = list(stream)
    usages = [c.usage for c in chunks]
    assert all(u is not None for u in usages), chunks
    prompt = usages[-1].prompt_tokens
    assert prompt > 5 and all(u.prompt_tokens == prompt for u in usages)
    done = [u.completion_tokens for u in usages]
    assert done == sorted(done) and done[0] == 0 and done[-1] > 0, done
    assert all(u.total_tokens == u.prompt_tokens + u.completion_tokens for u in usages)
    # Content chunks count the tokens generated so far; the usage-only chunk is last.
    assert chunks[-1].choices == [] and done[-2] == done[-1]


def test_raw_stream_ends_with_done(engine):
    r = requests.post(engine.base + "/v1/chat/completions", stream=True, timeout=60, json={
        "messages": [{"role": "user", "content": FRANCE}], "temperature": 0,
        "max_tokens": 8, "stream": True})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    lines = [ln for ln in r.iter_lines(decode_unicode=True) if ln]
    assert all(ln.startswith("data: ") for ln in lines), lines
    assert lines[-1] == "data: [DONE]"
    first = json.loads(lines[0][6:])
    assert first["choices"][0]["delta"]["role"] == "assistant"


def test_max_tokens_gives_length_and_exact_usage(engine):
    r = chat(engine.client(), "Write a long story about a robot who learns to paint.",
             max_tokens=5)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 5


def test_text_completion_and_stop_sequence(engine):
    client = engine.client()
    prompt = "1, 2, 3, 4, 5,"
    full = client.completions.create(model=ALIAS, prompt=prompt, max_tokens=12, temperature=0)
    text = full.choices[0].text
    assert full.object == "text_completion"
    assert full.choices[0].finish_reason == "length"
    assert full.usage.completion_tokens == 12
    assert " 6" in text, text
    # Stop at "9": the text before it is returned, the stop string itself is not.
    stopped = client.completions.create(model=ALIAS, prompt=prompt, max_tokens=12,
                                        temperature=0, stop=["9", "never-seen"])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == text[: text.index("9")]
    assert stopped.usage.completion_tokens < 12


def test_sampling_parameters_are_accepted_and_seed_is_reproducible(engine):
    client = engine.client()
    kw = dict(model=ALIAS, messages=[{"role": "user", "content": "Tell me a fun fact."}],
              max_tokens=16, temperature=0.9, top_p=0.9, seed=1234, presence_penalty=0.5,
              frequency_penalty=0.3, extra_body={"top_k": 40, "repetition_penalty": 1.1})
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.choices[0].message.content


def test_multibyte_text_streams_intact(engine):
    # Emoji are 4 UTF-8 bytes and byte-level BPE splits them across tokens: every streamed
    # piece must still be whole characters, and the stream must add up to the full answer.
    client = engine.client()
    prompt = "Emoji list: \U0001F34E \U0001F34C \U0001F347 \U0001F353 \U0001F352 \U0001F95D"
    kw = dict(model=ALIAS, prompt=prompt, max_tokens=24, temperature=0)
    whole = client.completions.create(**kw).choices[0].text
    pieces = [c.choices[0].text for c in client.completions.create(stream=True, **kw)
              if c.choices and c.choices[0].text]
    streamed = "".join(pieces)
    assert streamed == whole
    # A U+FFFD may only close a completion cut by max_tokens in the middle of a character.
    assert "\ufffd" not in whole.rstrip("\ufffd"), whole
    assert sum(ord(ch) > 0xFFFF for ch in whole) >= 3, f"expected emoji: {whole!r}"
    assert all("\ufffd" not in p for p in pieces[:-1]), pieces


# ---------------------------------------------------------------------------- batching


def test_four_concurrent_requests_are_batched(engine):
    questions = {
        "What is the capital of France?": "Paris",
        "What is the capital of Japan?": "Tokyo",
        "What is the capital of Italy?": "Rome",
        "What is the capital of Germany?": "Berlin",
    }
    before = engine.metrics()
    client = engine.client()
    barrier = threading.Barrier(len(questions))
    answers: dict[str, str] = {}
    errors: list[BaseException] = []

    def ask(q: str) -> None:
        try:
            barrier.wait()
            answers[q] = chat(client, q, max_tokens=48).choices[0].message.content
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(q,)) for q in questions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for q, city in questions.items():
        assert city in answers[q], (q, answers[q])

    after = engine.metrics()
    steps_with_4 = lambda m: (m['berth_engine_batch_sequences_bucket{le="+Inf"}']  # noqa: E731
                              - m['berth_engine_batch_sequences_bucket{le="3"}'])
    assert steps_with_4(after) - steps_with_4(before) >= 1, "no decode step held all 4 sequences"
    assert after["berth_engine_max_active_sequences"] >= 4
    assert after['berth_engine_requests_total{outcome="ok"}'] - \
        before['berth_engine_requests_total{outcome="ok"}'] == 4
    assert after["berth_engine_generated_tokens_total"] > before["berth_engine_generated_tokens_total"]
    assert after["berth_engine_prompt_tokens_total"] > before["berth_engine_prompt_tokens_total"]
    assert after["berth_engine_time_to_first_token_seconds_count"] >= \
        before["berth_engine_time_to_first_token_seconds_count"] + 4
    assert after["berth_engine_active_sequences"] == 0
    assert after["berth_engine_queue_depth"] == 0


# ---------------------------------------------------------------------------- admission, cancellation


def test_disconnect_mid_stream_frees_the_slot(one_slot):
    before = one_slot.metrics()
    r = long_stream(one_slot)
    lines = r.lines()
    got = [next(lines) for _ in range(6)]
    assert all(b'"text"' in ln for ln in got), got
    r.close()  # the client goes away mid-generation
    t0 = time.monotonic()
    # The only slot must be free at once: a short request is served promptly (the abandoned
    # one alone would hold the slot for ~1500 tokens, many seconds).
    short = requests.post(one_slot.base + "/v1/completions", timeout=30, json={
        "prompt": "Hello", "max_tokens": 4, "temperature": 0})
    elapsed = time.monotonic() - t0
    assert short.status_code == 200, short.text
    assert elapsed < 3.0, f"following request took {elapsed:.1f}s"
    after = one_slot.metrics()
    assert after['berth_engine_requests_total{outcome="cancelled"}'] == \
        before['berth_engine_requests_total{outcome="cancelled"}'] + 1
    assert after["berth_engine_active_sequences"] == 0


def test_beyond_the_queue_is_503_with_retry_after(one_slot):
    running = long_stream(one_slot, 600)   # takes the slot
    next(running.lines())
    queued = long_stream(one_slot, 600)   # waits in the queue (size 1); headers arrive at once
    try:
        third = requests.post(one_slot.base + "/v1/chat/completions", timeout=30, json={
            "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert third.status_code == 503, third.text
        assert third.headers.get("retry-after") == "1"
        err = third.json()["error"]
        assert err["type"] == "server_error" and err["message"]
        assert one_slot.metrics()["berth_engine_queue_depth"] == 1
    finally:
        running.close()
        queued.close()
    # Both freed promptly: the running one at its next token, the queued one at its next
    # keep-alive comment (sent every second while it waits).
    deadline = time.monotonic() + 5
    while True:
        ok = requests.post(one_slot.base + "/v1/completions", timeout=30, json={
            "prompt": "Hi", "max_tokens": 2})
        if ok.status_code != 503 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert ok.status_code == 200, ok.text
    m = one_slot.metrics()
    assert m["berth_engine_queue_depth"] == 0 and m["berth_engine_active_sequences"] == 0


# ---------------------------------------------------------------------------- shutdown


def test_sigterm_lets_the_running_request_finish_then_exits_0():
    e = Engine("--grace-secs", "30")
    try:
        e.wait_ready()
        r = RawStream(e, "/v1/completions", {
            "prompt": "1, 2, 3, 4, 5,", "max_tokens": 120, "temperature": 0, "stream": True})
        lines = r.lines()
        first = next(lines)
        assert first.startswith(b"data: ")
        e.proc.send_signal(signal.SIGTERM)
        rest = [ln for ln in lines if ln]
        assert rest[-1] == b"data: [DONE]", rest[-3:]
        finals = [json.loads(ln[6:]) for ln in rest[:-1]]
        assert finals[-1]["choices"][0]["finish_reason"] == "length"
        # No new work is accepted while draining.
        with pytest.raises(requests.RequestException):
            requests.get(e.base + "/health", timeout=2)
        assert e.proc.wait(20) == 0, e.logs()
    finally:
        e.stop()


# ---------------------------------------------------------------------------- bad input


BAD_CHAT = [
    ("malformed JSON", b'{"messages": [', None),
    ("not an object", b'[1, 2]', None),
    ("messages missing", {"model": "x"}, None),
    ("messages wrong type", {"messages": "hello"}, None),
    ("empty messages", {"messages": []}, "messages"),
    ("unknown role", {"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ("temperature < 0", {"temperature": -1}, "temperature"),
    ("temperature wrong type", {"temperature": "hot"}, None),
    ("top_p > 1", {"top_p": 1.5}, "top_p"),
    ("top_k < 0", {"top_k": -3}, "top_k"),
    ("max_tokens < 1", {"max_tokens": 0}, "max_tokens"),
    ("max_tokens not an integer", {"max_tokens": 2.5}, None),
    ("presence_penalty out of range", {"presence_penalty": 9}, "presence_penalty"),
    ("n > 1", {"n": 3}, "n"),
    ("too many stops", {"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ("prompt longer than the context",
     {"messages": [{"role": "user", "content": "hello world " * 1500}]}, "messages"),
]


@pytest.mark.parametrize("name,body,param", BAD_CHAT, ids=[c[0] for c in BAD_CHAT])
def test_bad_chat_input_is_400(engine, name, body, param):
    if isinstance(body, dict) and "messages" not in body and name not in (
            "messages missing",):
        body = {"messages": [{"role": "user", "content": "hi"}], **body}
    if isinstance(body, bytes):
        r = requests.post(engine.base + "/v1/chat/completions", data=body, timeout=10,
                          headers={"content-type": "application/json"})
    else:
        r = requests.post(engine.base + "/v1/chat/completions", json=body, timeout=10)
    assert r.status_code == 400, (name, r.status_code, r.text)
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert isinstance(err["message"], str) and err["message"]
    assert "param" in err and "code" in err
    if param is not None:
        assert err["param"] == param, err
    if name == "prompt longer than the context":
        assert err["code"] == "context_length_exceeded"


def test_bad_completion_input_is_400(engine):
    for body in ({"prompt": ""}, {"prompt": 5}, {"prompt": ["a", "b"]},
                 {"prompt": "x", "max_tokens": -1}, {"prompt": "hi " * 3000}):
        r = requests.post(engine.base + "/v1/completions", json=body, timeout=10)
        assert r.status_code == 400, (body if len(str(body)) < 100 else "long", r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"


def test_sdk_raises_bad_request_and_engine_survives(engine):
    with pytest.raises(openai.BadRequestError) as exc:
        chat(engine.client(), "hi", max_tokens=0)
    assert exc.value.status_code == 400
    assert engine.health() == 200
    assert "Paris" in chat(engine.client(), FRANCE, max_tokens=32).choices[0].message.content
    assert engine.proc.poll() is None
