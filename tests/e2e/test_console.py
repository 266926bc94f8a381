"""The web console: served by `berth serve` from the binary, driven in Debian's Chromium by
Playwright (tests/console/console.mjs) against the real model, and its replicas endpoint."""

import os
import subprocess
import sys
from pathlib import Path

import requests

from conftest import BERTH_BIN, ROOT, SMOLLM, stub_config, wait_for

CONSOLE_TESTS = ROOT / "tests" / "console"
CHROMIUM = os.environ.get("BERTH_CHROMIUM", "/usr/bin/chromium")


def test_console_is_served_from_the_binary(berth_factory):
    s = berth_factory(stub_config())
    # A browser opening / is sent to the console; an API client keeps the 404 envelope.
    r = requests.get(s.base + "/", headers={"Accept": "text/html,*/*"}, allow_redirects=False, timeout=10)
    assert r.status_code in (302, 303) and r.headers["location"] == "/console"
    r = requests.get(s.base + "/", timeout=10)
    assert r.status_code == 404 and r.json()["code"] == "NotFound"

    page = requests.get(s.base + "/console", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    for path, kind in [("/console/app.js", "text/javascript"), ("/console/style.css", "text/css"),
                       ("/console/favicon.svg", "image/svg+xml")]:
        r = requests.get(s.base + path, timeout=10)
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind), (path, r.headers)
        assert r.headers["cache-control"] == "no-cache" and r.headers["x-content-type-options"] == "nosniff"
        again = requests.get(s.base + path, headers={"If-None-Match": r.headers["etag"]}, timeout=10)
        assert again.status_code == 304 and not again.content
    missing = requests.get(s.base + "/console/nothing.js", timeout=10)
    assert missing.status_code == 404 and missing.json()["code"] == "NotFound"


def test_replicas_lists_states_in_the_callers_workspace(berth_factory):
    s = berth_factory(stub_config(start_delay_ms=300))
    s.api("POST", "/api/v1/deployments", json={"model_name": "stub-model", "capacity": 2, "suffix": "rep"})
    s.wait_status("stub-model-rep", "RUNNING", ready=2)
    r = s.api("GET", "/api/v1/deployments/stub-model-rep/replicas")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["request_id"] and body["output"]["deployed_model"] == "stub-model-rep"
    replicas = body["output"]["replicas"]
    assert len(replicas) == 2 and all(x["state"] == "ready" and x["ready"] for x in replicas), replicas
    assert len({x["replica_id"] for x in replicas}) == 2 and all(x["started_at"] for x in replicas)

    assert s.api("GET", "/api/v1/deployments/nope/replicas").json()["message"] == "Model: nope not found!"
    anon = requests.get(s.base + "/api/v1/deployments/stub-model-rep/replicas", timeout=10)
    assert anon.status_code == 401 and anon.json()["code"] == "InvalidApiKey"
    out = subprocess.run([BERTH_BIN, "keys", "create", "--workspace", "other", "--data-dir", s.data_dir],
                         capture_output=True, text=True, timeout=30, env={"PATH": os.environ["PATH"]})
    other = {"Authorization": f"Bearer {out.stdout.strip()}"}
    wait_for(lambda: requests.get(s.base + "/api/v1/deployments", headers=other, timeout=5).status_code == 200,
             timeout=10, what="the new key")
    foreign = requests.get(s.base + "/api/v1/deployments/stub-model-rep/replicas", headers=other, timeout=10)
    assert foreign.status_code == 404 and foreign.json()["code"] == "NotFound"

    s.api("PUT", "/api/v1/deployments/stub-model-rep/scale", json={"capacity": 1})
    s.wait_status("stub-model-rep", "RUNNING", ready=1)
    wait_for(lambda: len(s.api("GET", "/api/v1/deployments/stub-model-rep/replicas").json()["output"]["replicas"]) == 1,
             timeout=30, what="one replica left")


def test_console_in_a_real_browser(berth_factory, tmp_path):
    assert SMOLLM.exists(), f"the SmolLM2 weights are missing: {SMOLLM} (scripts/fetch-models)"
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: scripts/setup installs Debian's chromium"
    assert (CONSOLE_TESTS / "node_modules" / "playwright-core").is_dir(), \
        "playwright-core is missing: scripts/setup runs npm ci in tests/console"
    s = berth_factory()
    env = dict(os.environ, BERTH_URL=s.base, BERTH_KEY=s.key, BERTH_MODEL="smollm2-135m-instruct",
               BERTH_CHROMIUM=CHROMIUM, BERTH_PYTHON=sys.executable, PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD="1",
               HOME=str(tmp_path))
    if os.environ.get("BERTH_CONSOLE_SCREENSHOTS"):
        env["BERTH_CONSOLE_SCREENSHOTS"] = str(Path(os.environ["BERTH_CONSOLE_SCREENSHOTS"]).resolve())
    run = subprocess.run(["node", str(CONSOLE_TESTS / "console.mjs")], env=env, capture_output=True, text=True,
                         timeout=240, cwd=CONSOLE_TESTS)
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}\n{s.logs()}"
    assert "console test passed" in run.stdout, run.stdout
