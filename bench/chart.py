"""Draw docs/benchmarks.png from a results file: deliveries/s and p99 latency per server.

python bench/chart.py bench/results/results.json docs/benchmarks.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def value(result: dict[str, Any], scenario: str, key: str) -> float:
    """A number from the results, 0 when the scenario failed or did not run."""
    number = result.get(scenario, {}).get(key)
    return float(number) if isinstance(number, int | float) else 0.0


def main(source: str, target: str) -> None:
    """Read `source`, write the chart to `target`."""
    report = json.loads(Path(source).read_text())
    servers = {k: v for k, v in report["servers"].items() if "fanout" in v}
    names = list(servers)
    x = range(len(names))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7.5), constrained_layout=True)
    width = 0.38
    fanout = [value(servers[n], "fanout", "deliveries_per_s") / 1000 for n in names]
    chat = [value(servers[n], "chat", "deliveries_per_s") / 1000 for n in names]
    top.bar([i - width / 2 for i in x], fanout, width, label="fan-out 1 room x 1,000")
    top.bar([i + width / 2 for i in x], chat, width, label="chat 500 rooms x 2")
    top.set_ylabel("thousand deliveries / s")
    top.set_title("Throughput at saturation (server on one core; higher is better)")
    top.set_xticks(list(x), names, rotation=15)
    top.legend()
    for i, v in enumerate(fanout):
        top.text(i - width / 2, v, f"{v:.0f}", ha="center", va="bottom", fontsize=8)
    p99 = [value(servers[n], "latency", "p99_ms") for n in names]
    us = [value(servers[n], "cpu", "server_us_per_delivery") for n in names]
    bottom.bar(
        [i - width / 2 for i in x],
        p99,
        width,
        color="tab:red",
        label="p99 latency at 20k deliveries/s (ms)",
    )
    bottom.bar(
        [i + width / 2 for i in x],
        us,
        width,
        color="tab:gray",
        label="server CPU per delivery at 40k/s (us)",
    )
    bottom.set_yscale("log")
    bottom.set_title("Latency and cost at a fixed load (lower is better, log scale)")
    bottom.set_xticks(list(x), names, rotation=15)
    bottom.legend()
    machine = report.get("machine", {})
    fig.suptitle(
        f"roomcast benchmarks, {report.get('started', '')}, {machine.get('nproc')} x "
        f"{machine.get('cpu_model')}",
        fontsize=10,
    )
    fig.savefig(target, dpi=110)
    print(f"chart: {target}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
