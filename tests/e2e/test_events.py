"""The deployment event streams, read by the dashscope SDK and by `berth d watch`."""

import os
import subprocess
import threading
import time

import requests

from conftest import BERTH_BIN, stub_config, wait_for


def test_dashscope_sdk_streams_a_deployment_from_pending_to_deleted(berth_factory):
    import dashscope

    s = berth_factory(stub_config(start_delay_ms=800))
    client = dashscope.Client(api_key=s.key, base_url=s.base + "/api/v1")
    r = s.api("POST", "/api/v1/deployments", json={"model_name": "stub-model", "capacity": 1, "suffix": "ev"})
    name = r.json()["output"]["deployed_model"]
    seen: list = []
    ended = threading.Event()

    def read():
        for event in client.deployments.stream_events(name):
            assert not event.is_error, event
            seen.append(event.output)
        ended.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    wait_for(lambda: any(e.get("type") == "deployment" and e["deployment"]["status"] == "RUNNING" for e in seen),
             timeout=30, what="RUNNING on the stream")
    first = seen[0]
    assert first["type"] == "deployment" and first["deployment"]["deployed_model"] == name
    assert first["deployment"]["status"] in ("PENDING", "RUNNING")
    replica_states = [e["state"] for e in seen if e.get("type") == "replica"]
    assert "ready" in replica_states, seen

    # Another workspace's key sees nothing: 404 as for any other route.
    out = subprocess.run([BERTH_BIN, "keys", "create", "--workspace", "other", "--data-dir", s.data_dir],
                         capture_output=True, text=True, timeout=30, env={"PATH": os.environ["PATH"]})
    other = out.stdout.strip()
    wait_for(lambda: requests.get(s.base + "/api/v1/deployments", headers={"Authorization": f"Bearer {other}"},
                                  timeout=5).status_code == 200, timeout=10, what="the new key")
    foreign = requests.get(s.base + f"/api/v1/deployments/{name}/stream",
                           headers={"Authorization": f"Bearer {other}"}, timeout=10)
    assert foreign.status_code == 404 and foreign.json()["code"] == "NotFound"

    assert s.api("DELETE", f"/api/v1/deployments/{name}").status_code == 200
    assert ended.wait(30), f"the stream did not end after the delete: {seen}"
    kinds = [(e["type"], e.get("deployment", {}).get("status") or e.get("state")) for e in seen]
    assert ("deployment", "DELETING") in kinds, kinds
    assert ("replica", "exited") in kinds or ("replica", "stopped") in kinds, kinds
    assert kinds[-1] == ("deleted", None), kinds


def test_watch_follows_changes_until_the_deployment_is_gone(berth_factory):
    s = berth_factory(stub_config(start_delay_ms=300))
    r = s.api("POST", "/api/v1/deployments", json={"model_name": "stub-model", "capacity": 1, "suffix": "w"})
    name = r.json()["output"]["deployed_model"]
    env = {"PATH": os.environ["PATH"], "DASHSCOPE_HTTP_BASE_URL": s.base + "/api/v1", "DASHSCOPE_API_KEY": s.key}
    watch = subprocess.Popen([BERTH_BIN, "d", "watch", name], env=env, stdout=subprocess.PIPE, text=True)
    everything = subprocess.Popen([BERTH_BIN, "d", "watch", "-o", "json"], env=env, stdout=subprocess.PIPE, text=True)
    s.wait_status(name, "RUNNING", ready=1)
    time.sleep(0.5)
    s.api("PUT", f"/api/v1/deployments/{name}/scale", json={"capacity": 2})
    s.wait_status(name, "RUNNING", ready=2)
    s.api("DELETE", f"/api/v1/deployments/{name}")
    out, _ = watch.communicate(timeout=30)
    assert watch.returncode == 0
    lines = out.splitlines()
    assert any(f"{name}  RUNNING  2/2 ready" in l for l in lines), out
    assert lines[-1].endswith(f"{name}  deleted"), out
    everything.terminate()
    all_out, _ = everything.communicate(timeout=10)
    assert '"type":"deleted"' in all_out.replace(" ", ""), all_out


def test_logs_show_replica_output_and_follow_new_replicas(berth_factory):
    s = berth_factory(stub_config(start_delay_ms=100))
    r = s.api("POST", "/api/v1/deployments", json={"model_name": "stub-model", "capacity": 1, "suffix": "log"})
    name = r.json()["output"]["deployed_model"]
    s.wait_status(name, "RUNNING", ready=1)
    env = {"PATH": os.environ["PATH"], "DASHSCOPE_HTTP_BASE_URL": s.base + "/api/v1", "DASHSCOPE_API_KEY": s.key}
    wait_for(lambda: "stub engine listening" in subprocess.run([BERTH_BIN, "d", "logs", name], env=env,
                                                                capture_output=True, text=True).stdout,
             timeout=10, what="the replica's first line")
    once = subprocess.run([BERTH_BIN, "d", "logs", name], env=env, capture_output=True, text=True, timeout=30)
    assert once.returncode == 0
    [line] = [l for l in once.stdout.splitlines() if "stub engine listening" in l]
    assert line.startswith(f"[{name}-"), line

    follower = subprocess.Popen([BERTH_BIN, "d", "logs", name, "--follow", "--lines", "5"], env=env,
                                stdout=subprocess.PIPE, text=True)
    lines: list = []
    reader = threading.Thread(target=lambda: lines.extend(iter(follower.stdout.readline, "")), daemon=True)
    reader.start()
    s.api("PUT", f"/api/v1/deployments/{name}/scale", json={"capacity": 2})
    s.wait_status(name, "RUNNING", ready=2)
    wait_for(lambda: len({l.split("]")[0] for l in lines if "stub engine listening" in l}) == 2, timeout=15,
             what="the new replica's output on the followed stream")
    s.api("DELETE", f"/api/v1/deployments/{name}")
    assert follower.wait(timeout=30) == 0, "follow ends once the deployment is gone"

    bad = subprocess.run([BERTH_BIN, "d", "logs", name, "--lines", "0"], env=env, capture_output=True, text=True)
    assert bad.returncode in (2, 4), bad.stderr
