"""The benchmark scripts run end to end (tiny loads, roomcast only; no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_driver_quick_mode(tmp_path: Path) -> None:
    """`bench/driver.py --quick` measures every scenario against roomcast and writes JSON."""
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench/driver.py"), "--quick", "--servers", "roomcast",
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())["servers"]["roomcast"]
    errors = {name: r["error"] for name, r in result.items() if "error" in r}
    assert errors == {}
    for scenario in ("fanout", "chat", "latency", "cpu"):
        assert result[scenario]["deliveries"] > 0, (scenario, result[scenario])
        assert result[scenario]["server_cpu_s"] >= 0
    assert result["idle"]["connections"] == 100
    assert "roomcast" in done.stdout


def test_bench_join_and_storm_quick_mode(tmp_path: Path) -> None:
    """The `join` and `storm` scenarios run end to end at a tiny size: the storm kills the
    Redis-backed node, restarts it, and every client resumes from history with no gap."""
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench/driver.py"), "--quick", "--servers",
         "roomcast,roomcast-redis-1", "--scenarios", "join,storm", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    servers = json.loads(out.read_text())["servers"]
    for name in ("roomcast", "roomcast-redis-1"):
        for phase, connections in (("join_one_room", 50), ("join_rooms_of_10", 100)):
            result = servers[name][phase]
            assert "error" not in result, result
            assert result["connections"] == connections
            assert result["lost"] == 0
    assert "storm" not in servers["roomcast"]  # only a node with history across restarts
    storm = servers["roomcast-redis-1"]["storm"]
    assert "error" not in storm, storm
    assert storm["recovered"] == storm["connections"] == 40
    assert storm["not_recovered"] == storm["gaps"] == storm["refused"] == 0
    assert storm["server_peak_rss_mib"] > 0
    assert storm["server_cpu_s"] > 0  # the restarted node's start alone takes CPU ticks
    assert storm["redis_cpu_s"] >= 0  # a tiny storm may take Redis less than a tick


def test_bench_shards_quick(tmp_path: Path) -> None:
    """`bench/shards.py` measures the Redis CPU per publish on one and on two servers."""
    out = tmp_path / "shards.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench/shards.py"), "--seconds", "0.3", "--rooms", "4",
         "--subscribers", "0,1", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(r["servers"], r["subscribed_nodes"]) for r in rows] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    for row in rows:
        assert row["publishes"] > 0
        assert len(row["redis_cpu_pct"]) == row["servers"]
        # CPU time comes in 10 ms ticks: a 0.3 s run on a busy machine may show none.
        assert row["redis_us_per_publish"] >= 0


def test_bench_baseline_runs_another_checkout(tmp_path: Path) -> None:
    """`--baseline CHECKOUT` adds `roomcast-baseline`, roomcast from that checkout's `src`
    (here this one), measured in the same run as the others."""
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench/driver.py"), "--quick", "--baseline", str(ROOT),
         "--servers", "roomcast,roomcast-baseline", "--scenarios", "chat", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    servers = json.loads(out.read_text())["servers"]
    for name in ("roomcast", "roomcast-baseline"):
        assert servers[name]["chat"]["deliveries"] > 0, (name, servers[name]["chat"], done.stderr)
