"""`berth serve --database-url`: the desired state in PostgreSQL, across restarts and for `berth keys`.

Needs a server: BERTH_TEST_POSTGRES_URL names a database on it that a role allowed to create
databases can reach (scripts/setup makes one, scripts/test sets it); skipped when it is unset.
"""

import os
import subprocess
import uuid
from pathlib import Path

import pytest
import requests

from conftest import BERTH_BIN, stub_config, wait_for

ADMIN_URL = os.environ.get("BERTH_TEST_POSTGRES_URL")


def psql(url: str, sql: str) -> None:
    subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", url, "-c", sql], check=True,
                   capture_output=True, text=True, timeout=30)


@pytest.fixture
def database():
    """A fresh PostgreSQL database's URL, dropped afterwards."""
    if not ADMIN_URL:
        pytest.skip("BERTH_TEST_POSTGRES_URL is not set: no PostgreSQL server to test on")
    name = "berth_e2e_" + uuid.uuid4().hex[:12]
    psql(ADMIN_URL, f"CREATE DATABASE {name}")
    base, _, query = ADMIN_URL.partition("?")
    scheme, _, rest = base.partition("://")
    url = f"{scheme}://{rest.split('/', 1)[0]}/{name}" + (f"?{query}" if query else "")
    yield url
    psql(ADMIN_URL, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_serve_on_postgres_keeps_deployments_across_restarts_and_serves_keys(berth_factory, database):
    password = database.split("://", 1)[1].split("@", 1)[0].partition(":")[2]
    key = "sk-e2e-" + os.urandom(12).hex()
    s = berth_factory(stub_config(start_delay_ms=100), key=key, args=["--database-url", database])
    r = s.api("POST", "/api/v1/deployments", json={"model_name": "stub-model", "capacity": 1})
    assert r.status_code == 200, r.text
    s.wait_status("stub-model", "RUNNING", ready=1, timeout=20)
    assert s.stop() == 0
    # The state went to PostgreSQL, not to a SQLite file under the data dir.
    assert not (Path(s.data_dir) / "berth.db").exists()
    if password:
        assert f":{password}@" not in s.log_path.read_text(errors="replace"), "the password is never logged"

    # Another data dir, the same database: the deployment is there and is brought back up.
    again = berth_factory(stub_config(start_delay_ms=100), key=key, env={"BERTH_DATABASE_URL": database})
    listed = again.api("GET", "/api/v1/deployments").json()["output"]
    assert [d["deployed_model"] for d in listed["deployments"]] == ["stub-model"] and listed["total"] == 1, listed
    again.wait_status("stub-model", "RUNNING", ready=1, timeout=20)

    # `berth keys` finds the same store by the same flag, while the server runs.
    out = subprocess.run([BERTH_BIN, "keys", "create", "--workspace", "default", "--database-url", database,
                          "--data-dir", str(Path(again.dir.name) / "unused")],
                         capture_output=True, text=True, timeout=30, env={"PATH": os.environ["PATH"]})
    assert out.returncode == 0, out.stderr
    headers = {"Authorization": f"Bearer {out.stdout.strip()}"}
    wait_for(lambda: requests.get(again.base + "/api/v1/deployments/stub-model", headers=headers,
                                  timeout=5).status_code == 200, timeout=10, what="the key made by berth keys")
    assert not (Path(again.dir.name) / "unused" / "berth.db").exists()

    # A URL that is not PostgreSQL is refused at start-up, its password not shown.
    bad = subprocess.run([BERTH_BIN, "keys", "list", "--database-url", "mysql://u:s3cret@db/x"],
                         capture_output=True, text=True, timeout=30, env={"PATH": os.environ["PATH"]})
    assert bad.returncode != 0 and "database_url" in bad.stderr and "s3cret" not in bad.stderr, bad.stderr
