"""Hardening, against the real binary: clients without a key cannot take berth down, and every
input gets a clear answer (docs/RELIABILITY.md, "Hardening")."""

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from conftest import pid_alive, stub_config, wait_for

# `st` of the same environment as this Python.
ST = str(Path(sys.executable).parent / "st")


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    return s


def test_hundreds_of_idle_and_slow_connections_are_shed_and_berth_recovers(berth_factory):
    # 256 descriptors: the default cap is (256 - 128) / 2 = 64 client connections.
    s = berth_factory(stub_config(), fd_limit=256, env={"BERTH_SERVER_IDLE_TIMEOUT_SECS": "2",
                                                        "BERTH_SERVER_REQUEST_TIMEOUT_SECS": "3"})
    assert "max_connections=64" in s.logs(), s.logs()
    held = []
    for i in range(400):
        c = connect(s.port)
        if i % 3 == 1:
            c.sendall(b"POST /compatible-mode/v1/chat/completions HTTP/1.1\r\nhost: x\r\n")  # head never ends
        elif i % 3 == 2:
            c.sendall(b"POST /compatible-mode/v1/chat/completions HTTP/1.1\r\ncontent-length: 100\r\n\r\n{")
        held.append(c)
    started = time.time()
    # An authorized client waits its turn and is served once the others are cut off.
    r = requests.get(s.base + "/api/v1/deployments", headers=s.headers, timeout=60)
    recovered = time.time() - started
    assert r.status_code == 200, r.text
    assert recovered < 30, recovered
    logs = s.logs()
    assert "Too many open files" not in logs, logs
    assert "connection limit reached" in logs, logs
    print(f"\n400 connections held off by a berth with 256 descriptors; served again after {recovered:.1f} s")
    for c in held:
        c.close()
    # Every descriptor comes back.
    fds = lambda: len(list(Path(f"/proc/{s.proc.pid}/fd").iterdir()))
    wait_for(lambda: fds() < 40, timeout=20, what=f"descriptors released (open: {fds()})")
    assert requests.get(s.base + "/healthz", timeout=2).status_code == 200
    assert s.stop() == 0, s.logs()


def test_a_slow_body_without_a_key_is_refused_at_once(berth_factory):
    s = berth_factory(stub_config())
    c = connect(s.port)
    c.sendall(b"POST /compatible-mode/v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
              b"authorization: Bearer sk-wrong\r\nexpect: 100-continue\r\ncontent-length: 100000\r\n\r\n")
    started = time.time()
    c.settimeout(5)
    first = c.recv(4096)
    assert time.time() - started < 1
    assert first.startswith(b"HTTP/1.1 401 "), first
    assert b"100 Continue" not in first
    # The connection closes without waiting for the body.
    rest = b""
    while chunk := c.recv(4096):
        rest += chunk
    assert b"100 Continue" not in rest


def test_an_early_answer_reaches_a_client_that_sends_its_whole_body_first(berth_factory):
    s = berth_factory(stub_config())
    # urllib sends the whole body before it reads anything.
    import urllib.error
    import urllib.request
    body = b"x" * (2 * 1024 * 1024)
    req = urllib.request.Request(s.base + "/compatible-mode/v1/chat/completions", data=body,
                                 headers={**s.headers, "Content-Type": "application/json"})
    try:
        urllib.request.urlopen(req, timeout=30)
        raise AssertionError("a 2 MiB body was accepted")
    except urllib.error.HTTPError as e:
        assert e.code == 400
        assert "too large" in e.read().decode()


def test_sigterm_with_slow_clients_attached_exits_within_its_bound_and_stops_replicas(berth_factory):
    grace, stop_grace = 2, 3
    s = berth_factory(stub_config(start_delay_ms=0), env={"BERTH_SERVER_SHUTDOWN_GRACE_SECS": str(grace)})
    s.api("POST", "/api/v1/deployments", json={"model_name": "stub-model", "capacity": 1})
    s.wait_status("stub-model", "RUNNING", ready=1)
    replicas = [pid for pid, _ in s.replicas()]
    assert replicas
    # A body that trickles in, a head that never ends, a connection that sent nothing.
    trickle = connect(s.port)
    trickle.sendall(f"POST /compatible-mode/v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                    f"authorization: Bearer {s.key}\r\ncontent-length: 1000\r\n\r\n{{".encode())
    partial = connect(s.port)
    partial.sendall(b"GET /api/v1/deployments HTTP/1.1\r\nhost")
    silent = connect(s.port)
    stop = threading.Event()

    def keep_trickling():
        while not stop.is_set():
            try:
                trickle.sendall(b" ")
            except OSError:
                return
            time.sleep(0.2)

    threading.Thread(target=keep_trickling, daemon=True).start()
    time.sleep(0.5)
    started = time.time()
    s.proc.send_signal(signal.SIGTERM)
    s.proc.wait(timeout=grace + stop_grace + 10)
    took = time.time() - started
    stop.set()
    assert s.proc.returncode == 0, s.logs()
    assert took <= grace + stop_grace + 2, f"{took:.1f} s"
    assert not any(pid_alive(p) for p in replicas), "replicas left running"
    print(f"\nSIGTERM with slow clients attached: exited in {took:.1f} s (bound {grace + stop_grace + 2} s)")
    for c in (trickle, partial, silent):
        c.close()


def test_schemathesis_finds_nothing(berth_factory):
    """Every route of /openapi.json, every check, a fixed seed, about a minute."""
    s = berth_factory(stub_config(start_delay_ms=0, capacity_units=4))
    out = subprocess.run(
        [ST, "run", s.base + "/openapi.json", "-H", f"Authorization: Bearer {s.key}",
         "--checks", "all", "--max-examples", "60", "--seed", "12", "--no-color"],
        capture_output=True, text=True, timeout=300, cwd=s.dir.name,  # its cache goes there
        # The only excuse: autoscaling's cross-field rules, which JSON Schema cannot state.
        env={**os.environ, "SCHEMATHESIS_HOOKS": str(Path(__file__).with_name("schemathesis_hooks.py"))},
    )
    summary = out.stdout[-3000:]
    assert out.returncode == 0, summary + out.stderr[-2000:]
    cases = re.search(r"(\d+) generated, (\d+) passed", out.stdout)
    assert cases, summary
    # Every operation schemathesis found in the document was exercised.
    selected = re.search(r"(\d+) selected / (\d+) total", out.stdout)
    assert selected and int(selected.group(1)) == int(selected.group(2)) >= 14, summary
    # Every `$ref` of the document resolves, so no part of any schema was skipped.
    assert "Unresolvable references" not in out.stdout, summary
    print(f"\nschemathesis: {cases.group(1)} cases, {cases.group(2)} passed, every check")
    assert "panicked" not in s.logs()
