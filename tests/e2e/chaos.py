"""Crash chaos: SIGKILL `berth serve` at random moments while API writes and inference run, and
check after every restart that nothing acknowledged was lost, that replica processes match the
deployments exactly, and that no replica was restarted because of the restart itself.

Used by tests/e2e/test_crash_safety.py (a bounded run in CI) and scripts/chaos (longer runs).
"""

import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from conftest import BerthServer, replicas_in, stub_config

PRESENT, DELETED, UNKNOWN = "present", "deleted", "unknown"


def replica_deployments(data_dir: str) -> dict[str, set[int]]:
    """Live replica processes of a data dir, by the deployment named in their identity."""
    out: dict[str, set[int]] = {}
    for pid, _ in replicas_in(data_dir):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for e in env:
            if e.startswith(b"BERTH_REPLICA_ID="):
                replica_id = e.split(b"=", 1)[1].decode()
                out.setdefault(replica_id.rsplit("-", 1)[0], set()).add(pid)
    return out


@dataclass
class Stats:
    cycles: int = 0
    acked_creates: int = 0
    acked_deletes: int = 0
    acked_scales: int = 0
    lost_writes: list = field(default_factory=list)
    orphans: list = field(default_factory=list)
    duplicates: list = field(default_factory=list)
    needless_restarts: int = 0
    replicas_checked: int = 0
    adoption_ms: list = field(default_factory=list)
    inference_ok: int = 0
    inference_failed: int = 0

    def problems(self) -> list:
        return self.lost_writes + self.orphans + self.duplicates + (
            [f"{self.needless_restarts} needless replica restarts"] if self.needless_restarts else [])


class Chaos:
    def __init__(self, seed: int, work_dir: str):
        self.rng = random.Random(seed)
        self.data_dir = os.path.join(work_dir, "data")
        self.key = "sk-chaos-" + os.urandom(8).hex()
        self.config = stub_config(start_delay_ms=50, capacity_units=64)
        # name -> PRESENT / DELETED / UNKNOWN (a write whose answer never came)
        self.truth: dict[str, str] = {}
        self.capacity: dict[str, int | None] = {}  # acknowledged capacity; None when unknown
        self.lock = threading.Lock()
        self.stats = Stats()
        self.next_name = 0
        self.server: BerthServer | None = None

    # --- one server lifetime -------------------------------------------------------------
    def start(self) -> BerthServer:
        self.server = BerthServer(self.config, data_dir=self.data_dir, key=self.key)
        return self.server

    def converge(self, timeout: float = 20) -> dict:
        """Waits until every live deployment is RUNNING at its capacity and no DELETING one is
        left; returns {name: deployment}."""
        s = self.server
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            r = s.api("GET", "/api/v1/deployments?page_no=1&page_size=200")
            items = {d["deployed_model"]: d for d in r.json()["output"]["deployments"]}
            last = items
            if all(d["status"] == "RUNNING" and d["ready_capacity"] == d["capacity"] for d in items.values()):
                running = replica_deployments(self.data_dir)
                if all(len(running.get(n, ())) == d["capacity"] for n, d in items.items()) and \
                        set(running) <= set(items):
                    return items
            time.sleep(0.05)
        raise AssertionError(f"no convergence in {timeout}s: {last}\n{s.logs()}")

    def check(self, items: dict, before: dict[str, set[int]], untouched: set[str]):
        st = self.stats
        for name, state in self.truth.items():
            if state == PRESENT and name not in items:
                st.lost_writes.append(f"acknowledged create of {name} lost")
            if state == DELETED and name in items:
                st.lost_writes.append(f"acknowledged delete of {name} undone")
            cap = self.capacity.get(name)
            if state == PRESENT and name in items and cap is not None and items[name]["capacity"] != cap:
                st.lost_writes.append(f"{name}: capacity {items[name]['capacity']}, acknowledged {cap}")
        running = replica_deployments(self.data_dir)
        for name, pids in running.items():
            if name not in items:
                st.orphans.append(f"replicas {sorted(pids)} of {name}, which does not exist")
            elif len(pids) != items[name]["capacity"]:
                st.duplicates.append(f"{name}: {len(pids)} replicas for capacity {items[name]['capacity']}")
        for name in untouched:
            if name in before and name in running:
                st.replicas_checked += len(before[name])
                st.needless_restarts += len(before[name] - running[name])
        # Resolve what was unknown from what is there now.
        for name, state in list(self.truth.items()):
            if state == UNKNOWN:
                self.truth[name] = PRESENT if name in items else DELETED
            if self.truth[name] == PRESENT and name in items:
                self.capacity[name] = items[name]["capacity"]

    # --- the load ------------------------------------------------------------------------
    def writer(self, stop: threading.Event, touched: set[str]):
        s = self.server
        while not stop.is_set():
            with self.lock:
                present = [n for n, v in self.truth.items() if v == PRESENT]
                if not present:
                    op = "create"
                elif len(present) >= 12:  # keep within the node's capacity units
                    op = self.rng.choice(["scale", "delete", "delete"])
                else:
                    op = self.rng.choice(["create", "create", "scale", "delete"])
                if op == "create":
                    suffix = f"c{self.next_name}"
                    self.next_name += 1
                    name = f"stub-model-{suffix}"
                else:
                    name = self.rng.choice(present)
                touched.add(name)
                prior = self.truth.get(name)
                self.truth[name] = UNKNOWN
                cap = self.rng.randint(1, 2)
            try:
                if op == "create":
                    r = s.api("POST", "/api/v1/deployments",
                              json={"model_name": "stub-model", "capacity": cap, "suffix": suffix})
                    assert r.status_code == 200, r.text
                    assert r.json()["output"]["deployed_model"] == name
                    with self.lock:
                        self.truth[name] = PRESENT
                        self.capacity[name] = cap
                        self.stats.acked_creates += 1
                elif op == "scale":
                    r = s.api("PUT", f"/api/v1/deployments/{name}/scale", json={"capacity": cap})
                    with self.lock:
                        if r.status_code == 200:
                            self.truth[name] = PRESENT
                            self.capacity[name] = cap
                            self.stats.acked_scales += 1
                        else:
                            assert r.status_code in (404, 409), r.text
                            self.truth[name] = prior
                else:
                    r = s.api("DELETE", f"/api/v1/deployments/{name}")
                    assert r.status_code in (200, 404), r.text
                    with self.lock:
                        self.truth[name] = DELETED
                        self.stats.acked_deletes += r.status_code == 200
            except requests.RequestException:
                with self.lock:
                    # The answer never came: either outcome is allowed, the next check decides
                    # (a scale cannot make a deployment go away, so that stays present).
                    self.capacity[name] = None
                    if op == "scale":
                        self.truth[name] = prior
                return  # the server is gone

    def caller(self, stop: threading.Event, targets: list[str]):
        s = self.server
        while not stop.is_set() and targets:
            name = self.rng.choice(targets)
            try:
                r = requests.post(s.base + "/compatible-mode/v1/chat/completions", headers=s.headers, timeout=5,
                                  json={"model": name, "messages": [{"role": "user", "content": "hi"}]})
                if r.status_code == 200:
                    self.stats.inference_ok += 1
                else:
                    self.stats.inference_failed += 1
            except requests.RequestException:
                return

    def cycle(self):
        t0 = time.time()
        self.start()
        items = self.converge()
        self.stats.adoption_ms.append((time.time() - t0) * 1000)
        before = replica_deployments(self.data_dir)
        if self.stats.cycles:
            self.check(items, self.before, self.untouched)
        touched: set[str] = set()
        stop = threading.Event()
        threads = [threading.Thread(target=self.writer, args=(stop, touched)) for _ in range(2)]
        threads.append(threading.Thread(target=self.caller, args=(stop, list(items))))
        for t in threads:
            t.start()
        time.sleep(self.rng.uniform(0.1, 1.2))
        self.server.proc.send_signal(signal.SIGKILL)
        self.server.proc.wait()
        stop.set()
        for t in threads:
            t.join(timeout=10)
        self.server.log.close()
        self.before = before
        self.untouched = set(items) - touched
        self.stats.cycles += 1

    def finish(self):
        """One last start: check the last cycle, then a clean stop must leave no replica."""
        self.start()
        items = self.converge()
        self.check(items, self.before, self.untouched)
        assert self.server.stop() == 0
        left = replicas_in(self.data_dir)
        if left:
            self.stats.orphans.append(f"replicas left after a clean stop: {left}")
        return self.stats


def run(cycles: int, seed: int, work_dir: str) -> Stats:
    chaos = Chaos(seed, work_dir)
    try:
        for _ in range(cycles):
            chaos.cycle()
        return chaos.finish()
    finally:
        if chaos.server is not None and chaos.server.proc.poll() is None:
            chaos.server.proc.kill()
        for pid, _ in replicas_in(chaos.data_dir):
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
