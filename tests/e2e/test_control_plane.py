"""End to end: `berth serve` drives real replica processes; the dashscope SDK talks to it."""

import os
import signal
import subprocess
import tempfile

import requests

from conftest import BERTH_BIN, SMOLLM, pid_alive, replica_headers, replica_ports, stub_config, wait_for


def test_lifecycle_follows_real_processes(berth_factory):
    s = berth_factory(stub_config(start_delay_ms=500))
    r = s.api("POST", "/api/v1/deployments", json={"model_name": "stub-model", "capacity": 1})
    assert r.status_code == 200, r.text
    d = r.json()["output"]
    assert (d["status"], d["ready_capacity"], d["deployed_model"]) == ("PENDING", 0, "stub-model")

    d = s.wait_status("stub-model", "RUNNING", ready=1)
    assert len(s.replicas()) == 1
    for port in replica_ports(s):
        assert requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200

    r = s.api("PUT", "/api/v1/deployments/stub-model/scale", json={"capacity": 3})
    d = r.json()["output"]
    assert (d["status"], d["capacity"], d["ready_capacity"]) == ("UPDATING", 3, 1)
    s.wait_status("stub-model", "RUNNING", ready=3)
    assert len(s.replicas()) == 3

    s.api("PUT", "/api/v1/deployments/stub-model/scale", json={"capacity": 1})
    s.wait_status("stub-model", "RUNNING", ready=1)
    wait_for(lambda: len(s.replicas()) == 1, what="scale down to one process")

    r = s.api("DELETE", "/api/v1/deployments/stub-model")
    assert r.json()["output"]["status"] == "DELETING"
    wait_for(lambda: s.api("GET", "/api/v1/deployments/stub-model").status_code == 404, what="404 after delete")
    r = s.api("GET", "/api/v1/deployments/stub-model")
    assert r.json()["code"] == "NotFound"
    assert r.json()["message"] == "Model: stub-model not found!"
    assert s.replicas() == []


def test_dashscope_sdk_drives_deployments(berth_factory):
    import dashscope
    from dashscope import Deployments

    s = berth_factory(stub_config(start_delay_ms=100))
    dashscope.base_http_api_url = s.base + "/api/v1"
    dashscope.api_key = s.key

    created = Deployments.call(model="stub-model", capacity=1, suffix="sdk")
    assert created.status_code == 200, created
    assert created.output.deployed_model == "stub-model-sdk"
    assert created.output.status == "PENDING"
    assert created.output.capacity == 1 and created.output.ready_capacity == 0

    s.wait_status("stub-model-sdk", "RUNNING", ready=1)
    got = Deployments.get("stub-model-sdk")
    assert got.status_code == 200
    assert got.output.status == "RUNNING" and got.output.ready_capacity == 1
    assert got.output.charge_type == "post_paid"

    listed = Deployments.list(page_no=1, page_size=10)
    assert listed.status_code == 200
    assert listed.output.total == 1
    assert [d.deployed_model for d in listed.output.deployments] == ["stub-model-sdk"]

    scaled = Deployments.scale("stub-model-sdk", capacity=2)
    assert scaled.status_code == 200
    assert scaled.output.status == "UPDATING" and scaled.output.capacity == 2

    dup = Deployments.call(model="stub-model", capacity=1, suffix="sdk")
    assert dup.status_code == 409 and dup.code == "Conflict"
    bad = Deployments.call(model="stub-model", capacity=1000)
    assert bad.status_code == 400 and bad.code == "InvalidParameter"
    missing = Deployments.get("nope")
    assert missing.status_code == 404 and missing.message == "Model: nope not found!"

    deleted = Deployments.delete("stub-model-sdk")
    assert deleted.status_code == 200 and deleted.output.status == "DELETING"
    wait_for(lambda: Deployments.get("stub-model-sdk").status_code == 404, what="SDK sees 404")

    dashscope.api_key = "sk-wrong"
    denied = Deployments.list()
    assert denied.status_code == 401 and denied.code == "InvalidApiKey"


def test_missing_weights_fail_with_reason(berth_factory):
    empty = tempfile.mkdtemp(prefix="berth-no-models-")
    s = berth_factory(models_dir=empty)
    models = s.api("GET", "/api/v1/deployments/models").json()["output"]["models"]
    assert {m["model_name"]: m["available"] for m in models} == {"smollm2-135m-instruct": False, "gemma3-270m": False}
    s.api("POST", "/api/v1/deployments", json={"model_name": "gemma3-270m", "capacity": 1})
    d = s.wait_status("gemma3-270m", "FAILED", timeout=10)
    assert "gemma-3-270m-q4_k_m.gguf" in d["fail_reason"], d
    assert s.replicas() == []


def test_replica_that_cannot_start_fails_after_retries(berth_factory):
    s = berth_factory(f"""
[reconciler]
resync_secs = 0.5
backoff_secs = 0.2
max_start_failures = 3

[[models]]
model_name = "broken"
weights = "{BERTH_BIN}"
engine_command = ["{{berth}}", "no-such-subcommand"]
""")
    s.api("POST", "/api/v1/deployments", json={"model_name": "broken", "capacity": 1})
    d = s.wait_status("broken", "FAILED", timeout=30)
    assert "failed to start 3 times" in d["fail_reason"], d
    assert "exited" in d["fail_reason"] or "status" in d["fail_reason"], d
    # A delete always completes, whatever state the deployment is in.
    s.api("DELETE", "/api/v1/deployments/broken")
    wait_for(lambda: s.api("GET", "/api/v1/deployments/broken").status_code == 404, what="delete of a failed deployment")


def test_replicas_wait_for_node_capacity(berth_factory):
    s = berth_factory(stub_config(start_delay_ms=0, capacity_units=2))
    s.api("POST", "/api/v1/deployments", json={"model_name": "stub-model", "capacity": 3})
    d = wait_for(
        lambda: (o := s.api("GET", "/api/v1/deployments/stub-model").json()["output"])["ready_capacity"] == 2 and o,
        what="two ready replicas",
    )
    assert d["status"] == "PENDING"
    assert "Waiting for capacity" in d["status_message"], d
    assert len(s.replicas()) == 2
    # Freeing units lets the waiting replica start.
    s.api("PUT", "/api/v1/deployments/stub-model/scale", json={"capacity": 2})
    d = s.wait_status("stub-model", "RUNNING", ready=2)
    assert "status_message" not in d


def test_crashed_replica_is_replaced(berth_factory):
    s = berth_factory(stub_config(start_delay_ms=0))
    s.api("POST", "/api/v1/deployments", json={"model_name": "stub-model", "capacity": 1})
    s.wait_status("stub-model", "RUNNING", ready=1)
    [(pid, _)] = s.replicas()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: [p for p, _ in s.replicas() if p != pid], what="a replacement replica")
    s.wait_status("stub-model", "RUNNING", ready=1)
    assert not pid_alive(pid)


def test_shutdown_stops_every_replica(berth_factory):
    s = berth_factory(stub_config(start_delay_ms=0))
    s.api("POST", "/api/v1/deployments", json={"model_name": "stub-model", "capacity": 2})
    s.wait_status("stub-model", "RUNNING", ready=2)
    pids = [p for p, _ in s.replicas()]
    assert len(pids) == 2
    assert s.stop() == 0
    for pid in pids:
        assert not pid_alive(pid), f"replica {pid} survived shutdown"


def test_keys_cli_creates_lists_and_revokes(berth_factory):
    s = berth_factory(stub_config())
    data = os.path.join(s.dir.name, "data")
    out = subprocess.run([BERTH_BIN, "keys", "create", "--workspace", "team-a", "--data-dir", data],
                         capture_output=True, text=True, check=True)
    secret = out.stdout.strip()
    assert secret.startswith("sk-") and len(secret) >= 3 + 32
    headers = {"Authorization": f"Bearer {secret}"}
    r = requests.post(s.base + "/api/v1/deployments", headers=headers,
                      json={"model_name": "stub-model", "capacity": 0})
    assert r.json()["output"]["workspace_id"] == "team-a"
    # The default workspace does not see team-a's deployment.
    assert s.api("GET", "/api/v1/deployments/stub-model").status_code == 404

    listing = subprocess.run([BERTH_BIN, "keys", "list", "--data-dir", data], capture_output=True, text=True, check=True).stdout
    assert "team-a" in listing and secret not in listing
    key_id = next(line.split()[0] for line in listing.splitlines() if "team-a" in line)
    subprocess.run([BERTH_BIN, "keys", "revoke", key_id, "--data-dir", data], check=True, capture_output=True)
    wait_for(lambda: requests.get(s.base + "/api/v1/deployments", headers=headers).status_code == 401,
             timeout=10, what="revoked key rejected")
    bad = subprocess.run([BERTH_BIN, "keys", "create", "--workspace", "bad name", "--data-dir", data], capture_output=True, text=True)
    assert bad.returncode != 0 and "workspace" in bad.stderr


def test_default_catalog_runs_the_real_engine(berth_factory):
    assert SMOLLM.is_file(), f"{SMOLLM} missing: run scripts/fetch-models"
    s = berth_factory()
    models = {m["model_name"]: m for m in s.api("GET", "/api/v1/deployments/models").json()["output"]["models"]}
    assert models["smollm2-135m-instruct"]["available"] is True
    s.api("POST", "/api/v1/deployments", json={"model_name": "smollm2-135m-instruct", "capacity": 1})
    s.wait_status("smollm2-135m-instruct", "RUNNING", ready=1, timeout=120)
    [(pid, cmd)] = s.replicas()
    assert " engine " in f" {cmd} " and "SmolLM2-135M-Instruct.Q4_1.gguf" in cmd
    # Ready means it generates.
    port = replica_ports(s)[0]
    r = requests.post(f"http://127.0.0.1:{port}/v1/chat/completions", headers=replica_headers(port), timeout=60, json={
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 16, "temperature": 0})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] > 0


def test_bad_config_reports_every_problem():
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write('[node]\ncapacity_units = 2\n[gateway]\nhold_secs = -1\n[reconciler]\nresync_secs = 0\n')
    out = subprocess.run([BERTH_BIN, "serve", "--config", f.name, "--listen", "127.0.0.1:0"],
                         capture_output=True, text=True, timeout=30,
                         env={"PATH": os.environ["PATH"], "BERTH_GATEWAY_HOLD_QUEUE": "lots-of-secret"})
    assert out.returncode != 0
    for needle in ["gateway.hold_secs", "resync_secs", "BERTH_GATEWAY_HOLD_QUEUE"]:
        assert needle in out.stderr, out.stderr
    assert "lots-of-secret" not in out.stderr, "a value is never echoed: it may be a secret"


def test_serve_starts_with_kubernetes_service_links(berth_factory):
    """Variables that are not settings never stop berth; a look-alike of a setting is warned of once."""
    links = {
        "BERTH_PORT": "tcp://10.96.0.12:8080", "BERTH_PORT_8080_TCP": "tcp://10.96.0.12:8080",
        "BERTH_PORT_8080_TCP_ADDR": "10.96.0.12", "BERTH_PORT_8080_TCP_PORT": "8080",
        "BERTH_PORT_8080_TCP_PROTO": "tcp", "BERTH_SERVICE_HOST": "10.96.0.12",
        "BERTH_SERVICE_PORT": "8080", "BERTH_URL": "http://berth:8080", "BERTH_KEY": "sk-script-own",
        "BERTH_NODE_CAPACITY_UNIT": "3",
    }
    s = berth_factory(stub_config(), env=links)
    r = s.api("GET", "/api/v1/deployments/models")
    assert r.status_code == 200, r.text
    logs = s.logs()
    warnings = [line for line in logs.splitlines() if "not a berth setting" in line]
    assert len(warnings) == 1, logs
    assert "BERTH_NODE_CAPACITY_UNIT" in warnings[0] and "BERTH_NODE_CAPACITY_UNITS" in warnings[0]
    for name in ["BERTH_PORT", "BERTH_SERVICE_HOST", "BERTH_URL", "BERTH_KEY"]:
        assert f"{name} " not in logs, logs
