"""Three real `tnn serve` replicas behind a real HAProxy with the shipped config (deploy/haproxy/haproxy.cfg).

Under a bounded streaming load one replica is SIGKILLed: only requests in flight on it may fail, each with a clean
error and none hanging; the balancer stops sending to it; the survivors' /metrics account for every request they
answered; the replica rejoins after a restart. With session affinity a multi-turn chat stays on one replica and hits
its prefix-state cache on every turn after the first, and fails over with a correct answer when that replica dies.

Everything listens on 127.0.0.1; the load is bounded in count (LOAD_REQUESTS) and time (REQUEST_TIMEOUT_S).
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.deploy.conftest import REPO, tail
from tests.support import ServerProcess, free_port, make_tiny_model_dir, scrape_metrics

pytestmark = [pytest.mark.deploy, pytest.mark.slow]

HAPROXY_CFG = REPO / "deploy" / "haproxy" / "haproxy.cfg"
REPLICAS = ("tnn1", "tnn2", "tnn3")
VICTIM = "tnn2"
CONCURRENCY = 64
LOAD_REQUESTS = 192
MAX_TOKENS = 256  # long enough that streams are still being generated when the replica dies
KILL_AFTER = LOAD_REQUESTS // 6  # completed requests before the SIGKILL
REQUEST_TIMEOUT_S = 60.0
STATE_TIMEOUT_S = 30.0
CHAT_TURNS = 10


def require_haproxy() -> str:
    path = shutil.which("haproxy")
    if path is None:
        pytest.skip("haproxy not installed: run `make deploy-tools` (scripts/install-deploy-tools.sh, as root)")
    return path


@dataclass
class Balancer:
    url: str
    stats_url: str
    process: subprocess.Popen[bytes]
    log: Path

    def server_status(self) -> dict[str, str]:
        """Status (UP, DOWN, ...) of each replica in the affinity backend, from HAProxy's CSV stats."""
        if self.process.poll() is not None:
            pytest.fail(f"haproxy exited with {self.process.returncode}:\n{tail(self.log)}")
        try:
            text = httpx.get(self.stats_url + "/;csv", timeout=5).text.lstrip("# ")
        except httpx.HTTPError:  # not listening yet
            return {}
        return {
            row["svname"]: row["status"].split()[0]
            for row in csv.DictReader(io.StringIO(text))
            if row["pxname"] == "affinity" and row["svname"] in REPLICAS
        }

    def wait_status(self, name: str, status: str) -> float:
        """Seconds until `name` reports `status`; fails after STATE_TIMEOUT_S."""
        start = time.monotonic()
        while time.monotonic() - start < STATE_TIMEOUT_S:
            if self.server_status().get(name) == status:
                return time.monotonic() - start
            time.sleep(0.05)
        pytest.fail(f"{name} not {status} after {STATE_TIMEOUT_S} s: {self.server_status()}\n{tail(self.log)}")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Balancer, dict[str, ServerProcess], Callable[[str], ServerProcess]]]:
    haproxy = require_haproxy()
    model_dir = make_tiny_model_dir(tmp_path / "tiny")
    replicas = {name: ServerProcess(model_dir, args=["--max-num-seqs", "64"]) for name in REPLICAS}
    for replica in replicas.values():  # start all, then wait: the three load in parallel
        replica.launch()
    for replica in replicas.values():
        replica.wait_ready()

    port, stats_port = free_port(), free_port()
    env = {
        **os.environ,
        "TNN_LB_BIND": f"127.0.0.1:{port}",
        "TNN_LB_STATS_BIND": f"127.0.0.1:{stats_port}",
        **{f"TNN_REPLICA_{i + 1}": f"127.0.0.1:{replicas[name].port}" for i, name in enumerate(REPLICAS)},
    }
    log = tmp_path / "haproxy.log"
    with log.open("wb") as out:
        process = subprocess.Popen([haproxy, "-f", str(HAPROXY_CFG)], stdout=out, stderr=subprocess.STDOUT, env=env)
    balancer = Balancer(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{stats_port}", process, log)

    def restart(name: str) -> ServerProcess:
        """A new replica on the port of the killed one (what a supervisor or Kubernetes does)."""
        old = replicas[name]
        new = ServerProcess(model_dir, args=old.args)
        new.port, new.url = old.port, old.url
        replicas[name] = new.start()
        return new

    try:
        for name in REPLICAS:
            balancer.wait_status(name, "UP")
        yield balancer, replicas, restart
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)
        for replica in replicas.values():
            replica.stop()


class StatusWatcher(threading.Thread):
    """Polls one replica's status in the balancer every 50 ms and keeps the time of each change."""

    def __init__(self, balancer: Balancer, name: str) -> None:
        super().__init__(daemon=True)
        self.balancer, self.name = balancer, name
        self.changes: list[tuple[float, str]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(0.05):
            status = self.balancer.server_status().get(self.name, "?")
            if not self.changes or self.changes[-1][1] != status:
                self.changes.append((time.monotonic(), status))

    def stop(self) -> None:
        self._halt.set()
        self.join(5)

    def first(self, status: str) -> float:
        return next(t for t, s in self.changes if s == status)


@dataclass
class Outcome:
    served_by: str | None
    started: float
    ended: float
    ok: bool
    error: str | None


async def streamed_completion(client: httpx.AsyncClient, url: str, model: str, seed: int) -> Outcome:
    """One streaming completion through the balancer; ok only with status 200 and a final [DONE]."""
    body = {
        "model": model,
        "prompt": "Hello",
        "max_tokens": MAX_TOKENS,
        "stream": True,
        "seed": seed,
        "temperature": 1.0,
    }
    started = time.monotonic()
    served_by = None
    try:
        async with client.stream("POST", url + "/v1/completions", json=body) as response:
            served_by = response.headers.get("x-served-by")
            if response.status_code != 200:
                await response.aread()
                return Outcome(served_by, started, time.monotonic(), False, f"HTTP {response.status_code}")
            done = False
            async for line in response.aiter_lines():
                done = done or line.strip() == "data: [DONE]"
            error = None if done else "stream ended without [DONE]"
            return Outcome(served_by, started, time.monotonic(), done, error)
    except httpx.HTTPError as exc:
        return Outcome(served_by, started, time.monotonic(), False, type(exc).__name__)


async def load_with_kill(balancer: Balancer, victim: ServerProcess, model: str) -> tuple[list[Outcome], float]:
    """LOAD_REQUESTS streams, CONCURRENCY at a time; SIGKILL the victim after KILL_AFTER have completed."""
    outcomes: list[Outcome] = []
    kill_time = float("nan")
    queue: asyncio.Queue[int] = asyncio.Queue()
    for seed in range(LOAD_REQUESTS):
        queue.put_nowait(seed)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal kill_time
        while not queue.empty():
            seed = queue.get_nowait()
            outcome = await asyncio.wait_for(streamed_completion(client, balancer.url, model, seed), REQUEST_TIMEOUT_S)
            outcomes.append(outcome)
            if len(outcomes) == KILL_AFTER:
                assert victim.process is not None
                victim.process.send_signal(signal.SIGKILL)
                kill_time = time.monotonic()

    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(CONCURRENCY)))
    return outcomes, kill_time


def finished_choices(url: str) -> float:
    """tnn_requests_total summed over finish reasons (and any other labels)."""
    return sum(value for (name, _), value in scrape_metrics(url).items() if name == "tnn_requests_total")


def model_id(url: str) -> str:
    return httpx.get(url + "/v1/models", timeout=10).json()["data"][0]["id"]


def test_replica_killed_under_load(cluster, record_property) -> None:
    balancer, replicas, restart = cluster
    model = model_id(balancer.url)
    before = {name: finished_choices(replicas[name].url) for name in REPLICAS}

    watcher = StatusWatcher(balancer, VICTIM)
    watcher.start()
    try:
        outcomes, kill_time = asyncio.run(load_with_kill(balancer, replicas[VICTIM], model))
        balancer.wait_status(VICTIM, "DOWN")
    finally:
        watcher.stop()
    detection_s = watcher.first("DOWN") - kill_time

    assert len(outcomes) == LOAD_REQUESTS  # every request ended: none hung past REQUEST_TIMEOUT_S
    failed = [o for o in outcomes if not o.ok]
    # only requests in flight on the killed replica may fail: answered by it, started before the kill
    for outcome in failed:
        assert outcome.served_by == VICTIM and outcome.started <= kill_time, outcome
    late_to_victim = [o for o in outcomes if o.served_by == VICTIM and o.started > kill_time]
    assert all(not o.ok for o in late_to_victim) or not late_to_victim
    slowest_failure = max((o.ended - kill_time for o in failed), default=0.0)

    # the survivors' metrics account for every request they answered
    for name in REPLICAS:
        if name == VICTIM:
            continue
        served = sum(1 for o in outcomes if o.ok and o.served_by == name)
        assert finished_choices(replicas[name].url) - before[name] == served, name

    # the replica rejoins after a restart and gets traffic again
    restart(VICTIM)
    rejoin_s = balancer.wait_status(VICTIM, "UP")
    served_by = set()
    with httpx.Client(timeout=REQUEST_TIMEOUT_S) as client:
        for seed in range(12):
            body = {"model": model, "prompt": "Hi", "max_tokens": 4, "seed": seed}
            response = client.post(balancer.url + "/v1/completions", json=body)
            assert response.status_code == 200
            served_by.add(response.headers["x-served-by"])
    assert VICTIM in served_by

    figures = {
        "requests": len(outcomes),
        "failed": len(failed),
        "failed_errors": sorted({o.error or "" for o in failed}),
        "in_flight_on_victim_at_kill": sum(
            1 for o in outcomes if o.served_by == VICTIM and o.started <= kill_time <= o.ended
        ),
        "slowest_failure_after_kill_s": round(slowest_failure, 3),
        "victim_down_after_kill_s": round(detection_s, 3),
        "sent_to_victim_after_kill": len(late_to_victim),
        "rejoin_after_restart_s": round(rejoin_s, 3),
        "served_per_replica": {name: sum(1 for o in outcomes if o.ok and o.served_by == name) for name in REPLICAS},
    }
    record_property("failover", figures)
    print("failover figures:", figures)


def chat_turn(client: httpx.Client, url: str, model: str, messages: list[dict], session: str) -> httpx.Response:
    body = {"model": model, "messages": messages, "max_tokens": 16, "temperature": 0}
    response = client.post(url + "/v1/chat/completions", json=body, headers={"X-Session-ID": session})
    assert response.status_code == 200, response.text
    return response


def cached_tokens(response: httpx.Response) -> int:
    details = response.json()["usage"].get("prompt_tokens_details") or {}
    return int(details.get("cached_tokens") or 0)


def test_session_affinity_hits_the_cache_and_fails_over(cluster, record_property) -> None:
    balancer, replicas, _ = cluster
    model = model_id(balancer.url)
    messages: list[dict] = [{"role": "system", "content": "You are a terse assistant."}]
    homes, cached = [], []
    with httpx.Client(timeout=REQUEST_TIMEOUT_S) as client:
        for turn in range(CHAT_TURNS):
            messages.append({"role": "user", "content": f"Question number {turn}: what comes next?"})
            response = chat_turn(client, balancer.url, model, messages, session="conversation-1")
            homes.append(response.headers["x-served-by"])
            cached.append(cached_tokens(response))
            messages.append(response.json()["choices"][0]["message"])
        assert len(set(homes)) == 1, homes  # every turn on the replica that holds the conversation
        assert cached[0] == 0 and all(c > 0 for c in cached[1:]), cached  # a cache hit on every later turn

        home = homes[0]
        replicas[home].process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        balancer.wait_status(home, "DOWN")
        messages.append({"role": "user", "content": "And after the failure?"})
        failover = chat_turn(client, balancer.url, model, messages, session="conversation-1")
        new_home = failover.headers["x-served-by"]
        assert new_home != home and cached_tokens(failover) == 0
        # correct answer: the same greedy reply as a replica that never saw the conversation
        witness = next(name for name in REPLICAS if name not in (home, new_home))
        direct = client.post(
            replicas[witness].url + "/v1/chat/completions",
            json={"model": model, "messages": messages, "max_tokens": 16, "temperature": 0},
        )
        answer = failover.json()["choices"][0]["message"]["content"]
        assert answer == direct.json()["choices"][0]["message"]["content"]

        # the OpenAI `user` field pins a session too when no header is sent
        users = set()
        for _ in range(6):
            body = {"model": model, "prompt": "Hi", "max_tokens": 2, "user": "alice"}
            users.add(client.post(balancer.url + "/v1/completions", json=body).headers["x-served-by"])
        assert len(users) == 1
    figures = {"home": home, "cached_tokens_per_turn": cached, "failover_to": new_home}
    record_property("affinity", figures)
    print("affinity figures:", figures)


def test_balancer_errors_use_the_openai_error_format(tmp_path: Path) -> None:
    """With no replica up, the balancer answers 503 in the server's error format (with Retry-After), not HTML."""
    haproxy = require_haproxy()
    port, stats_port, dead = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "TNN_LB_BIND": f"127.0.0.1:{port}",
        "TNN_LB_STATS_BIND": f"127.0.0.1:{stats_port}",
        "TNN_REPLICA_1": f"127.0.0.1:{dead}",
    }
    log = tmp_path / "haproxy.log"
    with log.open("wb") as out:
        process = subprocess.Popen([haproxy, "-f", str(HAPROXY_CFG)], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        balancer = Balancer(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{stats_port}", process, log)
        balancer.wait_status("tnn1", "DOWN")
        response = httpx.post(balancer.url + "/v1/completions", json={"prompt": "Hi"}, timeout=10)
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert response.json()["error"]["code"] == "service_unavailable"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)
