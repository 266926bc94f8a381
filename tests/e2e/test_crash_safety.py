"""Crash safety end to end: adoption after SIGKILL and after a deliberate hand-over, one owner per
data dir, races that cannot undo a delete, writes that land whole whatever the client does,
drain on the way down, replica secrets and orphan timeouts. docs/RELIABILITY.md quotes these."""

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest
import requests

import chaos
from conftest import BERTH_BIN, SMOLLM, BerthServer, pid_alive, replica_ports, replicas_in, stub_config, wait_for


def deployments(s, page_size=200):
    r = s.api("GET", f"/api/v1/deployments?page_no=1&page_size={page_size}")
    assert r.status_code == 200, r.text
    return {d["deployed_model"]: d for d in r.json()["output"]["deployments"]}


def create(s, suffix, capacity=1, model="stub-model"):
    r = s.api("POST", "/api/v1/deployments", json={"model_name": model, "capacity": capacity, "suffix": suffix})
    assert r.status_code == 200, r.text
    return r.json()["output"]["deployed_model"]


def restart(berth_factory, s, config, **kw):
    return berth_factory(config, data_dir=s.data_dir, key=s.key, **kw)


def test_chaos_sigkill_cycles(tmp_path):
    """30 SIGKILLs at random moments while writes and calls run: nothing acknowledged is lost,
    processes match deployments exactly, and no replica is restarted by a restart."""
    cycles = int(os.environ.get("BERTH_CHAOS_CYCLES", "30"))
    stats = chaos.run(cycles, seed=int(os.environ.get("BERTH_CHAOS_SEED", "7")), work_dir=str(tmp_path))
    summary = {
        "cycles": stats.cycles, "acked_creates": stats.acked_creates, "acked_deletes": stats.acked_deletes,
        "acked_scales": stats.acked_scales, "lost_writes": len(stats.lost_writes), "orphans": len(stats.orphans),
        "duplicates": len(stats.duplicates), "needless_restarts": stats.needless_restarts,
        "replicas_checked": stats.replicas_checked,
        "restart_to_converged_ms_p50": sorted(stats.adoption_ms)[len(stats.adoption_ms) // 2],
        "restart_to_converged_ms_max": max(stats.adoption_ms),
        "inference_ok": stats.inference_ok, "inference_failed_around_kills": stats.inference_failed,
    }
    print("chaos:", json.dumps(summary))
    assert stats.problems() == [], stats.problems()
    assert stats.cycles == cycles
    assert stats.acked_creates > cycles and stats.replicas_checked > 0, summary


def test_restart_adopts_live_replicas_without_restarting_them(berth_factory):
    config = stub_config(start_delay_ms=300)
    s = berth_factory(config)
    a, b = create(s, "a", 3), create(s, "b", 1)
    s.wait_status(a, "RUNNING", ready=3)
    s.wait_status(b, "RUNNING", ready=1)
    before = sorted(pid for pid, _ in s.replicas())
    assert len(before) == 4
    s.proc.kill()
    s.proc.wait()
    assert all(pid_alive(p) for p in before), "a killed berth leaves its replicas running"

    t0 = time.time()
    again = restart(berth_factory, s, config)
    again.wait_status(a, "RUNNING", ready=3, timeout=2)
    again.wait_status(b, "RUNNING", ready=1, timeout=2)
    took = time.time() - t0
    assert took < 2, f"adoption took {took:.2f}s"
    print(f"adoption: 4 replicas of 2 deployments RUNNING again {took:.2f}s after the restart began")
    assert sorted(pid for pid, _ in again.replicas()) == before, "adopted, not restarted"
    r = requests.post(again.base + "/compatible-mode/v1/chat/completions", headers=again.headers, timeout=10,
                      json={"model": a, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    assert "replica adopted" in again.logs()

    # An adopted replica that dies is replaced like any other.
    os.killpg(before[0], signal.SIGKILL)
    wait_for(lambda: len(again.replicas()) == 4 and before[0] not in [p for p, _ in again.replicas()],
             timeout=15, what="replacement of a dead adopted replica")
    assert again.stop() == 0
    assert again.replicas() == [], "a clean stop stops adopted replicas too"


def test_sigusr2_hands_replicas_to_the_next_start(berth_factory):
    config = stub_config(start_delay_ms=0)
    s = berth_factory(config)
    name = create(s, "u", 2)
    s.wait_status(name, "RUNNING", ready=2)
    before = sorted(pid for pid, _ in s.replicas())
    s.proc.send_signal(signal.SIGUSR2)
    assert s.proc.wait(timeout=15) == 0
    assert sorted(pid for pid, _ in replicas_in(s.data_dir)) == before, "replicas left running"
    again = restart(berth_factory, s, config)
    again.wait_status(name, "RUNNING", ready=2, timeout=2)
    assert sorted(pid for pid, _ in again.replicas()) == before


def test_second_server_on_a_data_dir_exits_and_touches_nothing(berth_factory):
    config = stub_config(start_delay_ms=0)
    s = berth_factory(config)
    name = create(s, "own", 1)
    s.wait_status(name, "RUNNING", ready=1)
    before = s.replicas()
    out = subprocess.run([BERTH_BIN, "serve", "--listen", "127.0.0.1:0", "--data-dir", s.data_dir],
                         capture_output=True, text=True, timeout=20, env={"PATH": os.environ["PATH"]})
    assert out.returncode != 0
    assert "in use by another berth serve" in out.stderr and str(s.proc.pid) in out.stderr, out.stderr
    assert s.replicas() == before
    assert s.api("GET", f"/api/v1/deployments/{name}").json()["output"]["ready_capacity"] == 1
    # berth keys works beside the running server.
    keys = subprocess.run([BERTH_BIN, "keys", "list", "--data-dir", s.data_dir], capture_output=True, text=True,
                          timeout=20, env={"PATH": os.environ["PATH"]})
    assert keys.returncode == 0, keys.stderr


def test_scale_racing_delete_never_revives_the_deployment(berth_factory):
    s = berth_factory(stub_config(start_delay_ms=0))
    tries, scale_ok, scale_conflict = 20, 0, 0
    for i in range(tries):
        name = create(s, f"race{i}", 1)
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            scales = [pool.submit(s.api, "PUT", f"/api/v1/deployments/{name}/scale", json={"capacity": 2})
                      for _ in range(3)]
            deleted = pool.submit(s.api, "DELETE", f"/api/v1/deployments/{name}")
            results = [f.result() for f in scales]
        assert deleted.result().status_code == 200
        for r in results:
            # 404 once the delete has finished (its stub replica stops in milliseconds).
            assert r.status_code in (200, 404, 409), r.text
            scale_ok += r.status_code == 200
            scale_conflict += r.status_code == 409
            if r.status_code == 409:
                assert r.json()["message"] == f"Deployed model {name} is being deleted."
        got = s.api("GET", f"/api/v1/deployments/{name}")
        assert got.status_code == 404 or got.json()["output"]["status"] == "DELETING", got.text
    for i in range(tries):
        wait_for(lambda: s.api("GET", f"/api/v1/deployments/stub-model-race{i}").status_code == 404,
                 timeout=20, what=f"race{i} gone")
    assert s.replicas() == []
    print(f"race: {tries} tries, {scale_ok} scales before the delete, {scale_conflict} refused after it")


def _reset_mid_request(port, body: bytes, key: str, cut_after: int):
    """Sends a create and resets the connection after `cut_after` bytes of the request (RST)."""
    head = (f"POST /api/v1/deployments HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    data = head + body
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.sendall(data[:cut_after])
    if cut_after >= len(data):
        time.sleep(0.0005 * (cut_after % 7))  # sometimes while the handler is writing
    sock.close()


def test_client_resets_mid_request_leave_store_and_mirror_equal(berth_factory):
    # No capacity: deployments stay PENDING and no replica starts, so only the writes are tested.
    config = stub_config(start_delay_ms=0, capacity_units=0)
    s = berth_factory(config)
    tries = 300
    for i in range(tries):
        body = json.dumps({"model_name": "stub-model", "capacity": 1, "suffix": f"r{i}"}).encode()
        full = len(body) + 200
        _reset_mid_request(s.port, body, s.key, full if i % 2 else (i * 37) % full)
    time.sleep(0.5)
    mirror = deployments(s)
    # Every name the mirror lacks is free (a create answers 200), every name it has is taken.
    for i in range(tries):
        name = f"stub-model-r{i}"
        got = s.api("GET", f"/api/v1/deployments/{name}").status_code
        assert got == (200 if name in mirror else 404), name
    assert s.stop() == 0
    # The store, read fresh by a new server, holds exactly what the mirror showed.
    again = restart(berth_factory, s, config)
    assert set(deployments(again)) == set(mirror)
    again_items = deployments(again)
    for name, d in mirror.items():
        assert again_items[name]["gmt_create"] == d["gmt_create"]
    print(f"resets: {tries} creates cut at random points, {len(mirror)} landed, store == mirror")


def test_replica_secret_adoption_and_orphan_timeout_on_the_real_engine(berth_factory):
    config = """
[reconciler]
resync_secs = 0.5
[runtime]
orphan_timeout_secs = 4
"""
    s = berth_factory(config)
    name = create(s, "adopt", 1, model="smollm2-135m-instruct")
    s.wait_status(name, "RUNNING", ready=1, timeout=120)
    [(pid, _)] = s.replicas()
    [port] = replica_ports(s)
    # Straight to the replica without its secret: refused. Through berth: answered.
    direct = requests.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=10,
                           json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    assert direct.status_code == 401, direct.text
    assert requests.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 401
    ask = {"model": name, "temperature": 0, "max_tokens": 16,
           "messages": [{"role": "user", "content": "What is the capital of France?"}]}
    r = requests.post(s.base + "/compatible-mode/v1/chat/completions", headers=s.headers, json=ask, timeout=60)
    assert r.status_code == 200 and "Paris" in r.json()["choices"][0]["message"]["content"], r.text

    # SIGKILL and back: the same engine process serves again within 2 s, no reload of the model.
    s.proc.kill()
    s.proc.wait()
    t0 = time.time()
    again = restart(berth_factory, s, config)
    again.wait_status(name, "RUNNING", ready=1, timeout=2)
    took = time.time() - t0
    assert [p for p, _ in again.replicas()] == [pid]
    r = requests.post(again.base + "/compatible-mode/v1/chat/completions", headers=again.headers, json=ask,
                      timeout=60)
    assert r.status_code == 200 and "Paris" in r.json()["choices"][0]["message"]["content"], r.text
    print(f"real engine adopted in {took:.2f}s")

    # SIGKILL for good: the replica hears no more checks and stops by itself after 4 s, even
    # while someone else polls its /health.
    again.proc.kill()
    again.proc.wait()
    t1 = time.time()
    while pid_alive(pid) and time.time() - t1 < 20:
        try:
            requests.get(f"http://127.0.0.1:{port}/health", timeout=1)
        except requests.RequestException:
            pass
        time.sleep(0.2)
    gone_after = time.time() - t1
    assert not pid_alive(pid), "an orphaned replica stops by itself"
    # The last check came up to one health interval (2 s) before the kill.
    assert 1.5 < gone_after < 15, gone_after
    print(f"orphan stopped itself {gone_after:.1f}s after its berth died (timeout 4s)")


def _stream(base, headers, model, results, max_tokens):
    try:
        with requests.post(base + "/compatible-mode/v1/chat/completions", headers=headers, stream=True, timeout=120,
                           json={"model": model, "stream": True, "max_tokens": max_tokens, "temperature": 0,
                                 "stream_options": {"include_usage": True},
                                 "messages": [{"role": "user", "content": "Count from one to fifty in words."}]}) as r:
            if r.status_code != 200:
                results.append(("status", r.status_code))
                return
            done = usage = False
            for line in r.iter_lines():
                if line == b"data: [DONE]":
                    done = True
                elif line.startswith(b"data: ") and b'"usage"' in line and b'"completion_tokens"' in line:
                    usage = True
            results.append(("ok" if done and usage else "truncated", None))
    except requests.RequestException as e:
        results.append(("error", str(e)))


def test_drain_under_streaming_load_loses_nothing(berth_factory):
    """Scale 2 -> 1 and then delete while streams run on the real model: every stream that was
    admitted ends whole; calls after the delete get 404 at once."""
    s = berth_factory("[reconciler]\nresync_secs = 0.5\ndrain_secs = 60\n")
    name = create(s, "drain", 2, model="smollm2-135m-instruct")
    s.wait_status(name, "RUNNING", ready=2, timeout=180)
    results: list = []

    def wave(n):
        threads = [threading.Thread(target=_stream, args=(s.base, s.headers, name, results, 48)) for _ in range(n)]
        for t in threads:
            t.start()
        return threads

    first = wave(6)
    time.sleep(1.0)
    r = s.api("PUT", f"/api/v1/deployments/{name}/scale", json={"capacity": 1})
    assert r.status_code == 200
    second = wave(4)
    for t in first + second:
        t.join(timeout=180)
    s.wait_status(name, "RUNNING", ready=1, timeout=60)
    third = wave(4)
    time.sleep(0.5)
    r = s.api("DELETE", f"/api/v1/deployments/{name}")
    assert r.status_code == 200
    late = requests.post(s.base + "/compatible-mode/v1/chat/completions", headers=s.headers, timeout=10,
                         json={"model": name, "messages": [{"role": "user", "content": "hi"}]})
    assert late.status_code == 404, late.text
    for t in third:
        t.join(timeout=180)
    bad = [r for r in results if r[0] != "ok"]
    print(f"drain: {len(results)} streams across scale-down and delete, {len(bad)} failed or truncated")
    assert len(results) == 14 and bad == [], results
    wait_for(lambda: s.api("GET", f"/api/v1/deployments/{name}").status_code == 404, timeout=60, what="gone")
    assert s.replicas() == []
