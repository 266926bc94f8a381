"""`berth deployments` and `berth chat` end to end, against a running `berth serve`."""

import json
import os
import subprocess

from conftest import BERTH_BIN, stub_config


def cli(server, *args, key=None, stdin=None, timeout=120):
    env = {"PATH": os.environ["PATH"], "DASHSCOPE_HTTP_BASE_URL": server.base + "/api/v1",
           "DASHSCOPE_API_KEY": key or server.key}
    return subprocess.run([BERTH_BIN, *args], env=env, capture_output=True, text=True, timeout=timeout,
                          input=stdin)


BROKEN = """
[[models]]
model_name = "broken-model"
weights = "/nonexistent/broken.gguf"
"""


def test_deployments_cli_drives_the_lifecycle(berth_factory):
    s = berth_factory(stub_config(start_delay_ms=300, extra=BROKEN))
    models = cli(s, "deployments", "models")
    assert models.returncode == 0, models.stderr
    assert models.stdout.splitlines()[0].split() == ["MODEL", "BASE", "CAPACITY", "AVAILABLE", "DISPLAY", "NAME"]
    assert any(l.split()[:3] == ["broken-model", "1", "no"] for l in models.stdout.splitlines()), models.stdout

    made = cli(s, "d", "create", "stub-model", "--capacity", "1", "--suffix", "cli", "--rpm-limit", "100", "--wait")
    assert made.returncode == 0, made.stderr
    assert "deployed_model:  stub-model-cli" in made.stdout
    assert "stub-model-cli: RUNNING after" in made.stderr

    got = cli(s, "d", "get", "stub-model-cli", "-o", "json")
    assert got.returncode == 0
    assert json.loads(got.stdout)["output"] == s.api("GET", "/api/v1/deployments/stub-model-cli").json()["output"]

    scaled = cli(s, "d", "scale", "stub-model-cli", "--capacity", "2", "--wait")
    assert scaled.returncode == 0, scaled.stderr
    listed = cli(s, "d", "list")
    row = next(l.split() for l in listed.stdout.splitlines() if l.startswith("stub-model-cli"))
    assert row[:5] == ["stub-model-cli", "RUNNING", "2/2", "100", "-"], listed.stdout
    assert row[5].endswith("ago") or row[6] == "ago", row
    page = json.loads(cli(s, "d", "list", "-o", "json", "--page-size", "5").stdout)["output"]
    assert page["total"] == 1 and page["page_size"] == 5

    updated = cli(s, "d", "update", "stub-model-cli", "--tpm-limit", "5000", "-o", "json")
    assert json.loads(updated.stdout)["output"]["tpm_limit"] == 5000

    # Errors: the server's code and message, one exit code per class.
    missing = cli(s, "d", "get", "nope")
    assert missing.returncode == 4 and "NotFound: Model: nope not found!" in missing.stderr, missing.stderr
    taken = cli(s, "d", "create", "stub-model", "--capacity", "1", "--suffix", "cli")
    assert taken.returncode == 5 and "Conflict" in taken.stderr
    assert cli(s, "d", "list", key="sk-wrong-key-123").returncode == 3
    assert cli(s, "d", "update", "stub-model-cli").returncode == 2
    bad = cli(s, "d", "create", "stub-model", "--capacity", "1", "--suffix", "not a suffix!")
    assert bad.returncode == 2 and "InvalidParameter" in bad.stderr, bad.stderr

    # A deployment that cannot run: wait ends non-zero with its reason.
    cli(s, "d", "create", "broken-model", "--capacity", "1")
    failed = cli(s, "d", "wait", "broken-model", "--timeout", "30")
    assert failed.returncode == 7, failed.stderr
    assert "FAILED" in failed.stderr and "/nonexistent/broken.gguf" in failed.stderr

    gone = cli(s, "d", "delete", "stub-model-cli", "--wait")
    assert gone.returncode == 0, gone.stderr
    assert "stub-model-cli: deleted after" in gone.stderr
    assert s.api("GET", "/api/v1/deployments/stub-model-cli").status_code == 404
    assert cli(s, "d", "wait", "stub-model-cli", "--for", "deleted").returncode == 0


def test_chat_streams_an_answer_from_the_real_model(berth_factory):
    s = berth_factory()
    made = cli(s, "d", "create", "smollm2-135m-instruct", "--capacity", "1", "--wait", timeout=180)
    assert made.returncode == 0, made.stderr
    one = cli(s, "chat", "smollm2-135m-instruct", "What is the capital of France?", "--temperature", "0",
              "--max-tokens", "16")
    assert one.returncode == 0, one.stderr
    assert "Paris" in one.stdout, one.stdout
    # A conversation from standard input: one turn a line, the history kept.
    convo = cli(s, "chat", "smollm2-135m-instruct", "--temperature", "0", "--max-tokens", "12",
                stdin="What is the capital of France?\nAnd of Italy?\n")
    assert convo.returncode == 0, convo.stderr
    lines = [l for l in convo.stdout.splitlines() if l.strip()]
    assert len(lines) == 2 and "Paris" in lines[0], convo.stdout
    assert cli(s, "chat", "no-such-deployment", "hi").returncode == 4
