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
        assert result[scenario]["deliveries"] > 0
        assert result[scenario]["server_cpu_s"] >= 0
    assert result["idle"]["connections"] == 100
    assert "roomcast" in done.stdout
