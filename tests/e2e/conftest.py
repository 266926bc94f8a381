"""Shared fixtures of berth's end-to-end tests: the real `berth` binary on real sockets."""

import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
BERTH_BIN = os.environ.get("BERTH_BIN", str(ROOT / "target" / "debug" / "berth"))
MODELS_DIR = os.environ.get("BERTH_MODELS_DIR", str(ROOT / "models"))
SMOLLM = Path(MODELS_DIR) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children_of(pid: int) -> list[tuple[int, str]]:
    """Live direct children of `pid`: (pid, command line)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            state = stat.rsplit(")", 1)[1].split()[0]
            if ppid == pid and state != "Z":
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
                out.append((int(entry.name), cmd))
        except (OSError, ValueError, IndexError):
            continue
    return out


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def replicas_in(data_dir: str) -> list[tuple[int, str]]:
    """Live replica processes whose output goes to a log file under `data_dir` (berth points a
    replica's stdout at `<data_dir>/replicas/<id>.log`): found whoever their parent is now, so
    replicas adopted by a restarted berth, or left behind by a killed one, count too."""
    prefix = os.path.realpath(data_dir) + "/replicas/"
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if not os.readlink(entry / "fd" / "1").startswith(prefix):
                continue
            stat = (entry / "stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            # Only group leaders: a replica's own children share its log file.
            if fields[0] == "Z" or int(fields[2]) != int(entry.name):
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            out.append((int(entry.name), cmd))
        except (OSError, ValueError, IndexError):
            continue
    return sorted(out)


def replica_headers(port: int) -> dict:
    """The bearer header that the replica listening on `port` takes: its secret, read from the
    environment berth gave it (tests run as root, so /proc/PID/environ is readable)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            if b"--port" not in cmd or cmd[cmd.index(b"--port") + 1] != str(port).encode():
                continue
            for e in (entry / "environ").read_bytes().split(b"\0"):
                if e.startswith(b"BERTH_REPLICA_SECRET="):
                    return {"Authorization": "Bearer " + e.split(b"=", 1)[1].decode()}
        except (OSError, ValueError, IndexError):
            continue
    return {}


def replica_ports(server) -> list[int]:
    """Ports of a server's replicas, read from their command lines."""
    ports = []
    for _, cmd in server.replicas():
        parts = cmd.split()
        if "--port" in parts:
            ports.append(int(parts[parts.index("--port") + 1]))
    return ports


def wait_for(predicate, timeout=30, what="condition"):
    """Polls `predicate` until it returns something truthy; returns that."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class BerthServer:
    """A running `berth serve` with its own data dir, port and bootstrap key."""

    def __init__(self, config: str | None = None, env: dict | None = None, models_dir: str = MODELS_DIR,
                 data_dir: str | None = None, key: str | None = None, fd_limit: int | None = None,
                 args: list[str] | None = None):
        self.dir = tempfile.TemporaryDirectory(prefix="berth-e2e-")
        self.data_dir = data_dir or str(Path(self.dir.name) / "data")
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.key = key or "sk-e2e-" + os.urandom(12).hex()
        extra_args = args or []
        args = [BERTH_BIN, "serve", "--listen", f"127.0.0.1:{self.port}",
                "--data-dir", self.data_dir, "--models-dir", models_dir, *extra_args]
        if config is not None:
            path = Path(self.dir.name) / "berth.toml"
            path.write_text(config)
            args += ["--config", str(path)]
        full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root"),
                    "BERTH_BOOTSTRAP_KEY": self.key, "RUST_LOG": os.environ.get("RUST_LOG", "info")}
        full_env.update(env or {})
        self.log_path = Path(self.dir.name) / "berth.log"
        self.log = open(self.log_path, "wb")
        def limit_fds():
            # `ulimit -n` for berth alone (soft and hard), as a constrained host would set it.
            import resource
            resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))

        self.proc = subprocess.Popen(args, env=full_env, stdout=self.log, stderr=subprocess.STDOUT,
                                     preexec_fn=limit_fds if fd_limit else None)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"berth serve exited early:\n{self.logs()}")
            try:
                if requests.get(self.base + "/healthz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"berth serve did not start:\n{self.logs()}")

    def logs(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-6000:]

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.key}"}

    def api(self, method: str, path: str, **kw) -> requests.Response:
        return requests.request(method, self.base + path, headers=self.headers, timeout=30, **kw)

    def replicas(self) -> list[tuple[int, str]]:
        """This server's live replica processes (children or adopted)."""
        return replicas_in(self.data_dir)

    def wait_status(self, name: str, status: str, timeout: float = 60, ready=None) -> dict:
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            r = self.api("GET", f"/api/v1/deployments/{name}")
            if r.status_code == 200:
                last = r.json()["output"]
                if last["status"] == status and (ready is None or last["ready_capacity"] == ready):
                    return last
            else:
                last = r.json()
            time.sleep(0.1)
        raise AssertionError(f"{name} never reached {status} (ready {ready}); last: {last}\n{self.logs()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


@pytest.fixture
def berth_factory():
    """Starts `berth serve` instances; stops them (and checks they exit cleanly) afterwards."""
    started = []

    def start(config: str | None = None, env: dict | None = None, **kw) -> BerthServer:
        s = BerthServer(config, env, **kw)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()
    # A test that killed a server may leave its replicas behind on purpose: never let them leak.
    for s in started:
        for pid, _ in replicas_in(s.data_dir):
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass


def stub_config(start_delay_ms: int = 200, capacity_units: int = 8, extra: str = "") -> str:
    """A catalog whose model runs `berth stub-engine` replicas: fast, no weights needed beyond a file."""
    weights = Path(tempfile.gettempdir()) / "berth-e2e-stub.gguf"
    weights.write_bytes(b"stub")
    return f"""
[node]
capacity_units = {capacity_units}

[reconciler]
resync_secs = 0.5
stop_grace_secs = 3

[[models]]
model_name = "stub-model"
display_name = "Stub"
weights = "{weights}"
engine_command = ["{{berth}}", "stub-engine", "--host", "{{host}}", "--port", "{{port}}", "--start-delay-ms", "{start_delay_ms}"]
base_capacity = 1
{extra}
"""
