"""Render a results file as the Markdown tables of docs/benchmarks.md (results and targets).

Usage: `python bench/report.py bench/results/results.json [--update docs/benchmarks.md]`.
With `--update`, the tables replace what lies between the document's `<!-- results:start -->`
and `<!-- results:end -->` lines; otherwise they are printed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def get(report: dict[str, Any], server: str, scenario: str, key: str) -> float | None:
    """One number of the results, None when that server or scenario did not produce it."""
    value = report["servers"].get(server, {}).get(scenario, {}).get(key)
    return float(value) if isinstance(value, int | float) else None


def fmt(value: float | None, spec: str = ",.0f") -> str:
    return "n/a" if value is None else format(value, spec)


def results_table(report: dict[str, Any]) -> str:
    """One row per server: every scenario's headline number and both processes' CPU."""
    rows = [
        "| server | fan-out deliveries/s | p50 / p99 ms | generator / server CPU % "
        "| chat deliveries/s | p99 ms at 20k/s | server us per delivery at 40k/s "
        "| KiB per idle connection | connections/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in report["servers"]:

        def g(scenario: str, key: str, name: str = name) -> float | None:
            return get(report, name, scenario, key)

        rows.append(
            f"| {name} | {fmt(g('fanout', 'deliveries_per_s'))} "
            f"| {fmt(g('fanout', 'p50_ms'), '.0f')} / {fmt(g('fanout', 'p99_ms'), '.0f')} "
            f"| {fmt(g('fanout', 'loadgen_cpu_pct'), '.0f')} / "
            f"{fmt(g('fanout', 'server_cpu_pct'), '.0f')} "
            f"| {fmt(g('chat', 'deliveries_per_s'))} | {fmt(g('latency', 'p99_ms'), '.1f')} "
            f"| {fmt(g('cpu', 'server_us_per_delivery'), '.2f')} "
            f"| {fmt(g('idle', 'kib_per_connection'), '.1f')} "
            f"| {fmt(g('idle', 'connections_per_s'))} |"
        )
    return "\n".join(rows)


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def targets_table(report: dict[str, Any], subject: str = "roomcast") -> str:
    """The targets of the benchmark issue, as ratios measured in the same run."""

    def g(server: str, scenario: str, key: str) -> float | None:
        return get(report, server, scenario, key)

    checks: list[tuple[str, float | None, str, bool | None]] = []

    def at_least(label: str, value: float | None, bound: float) -> None:
        checks.append((label, value, f">= {bound:g}", None if value is None else value >= bound))

    def at_most(label: str, value: float | None, bound: float) -> None:
        checks.append((label, value, f"<= {bound:g}", None if value is None else value <= bound))

    for scenario in ("fanout", "chat"):
        mine = g(subject, scenario, "deliveries_per_s")
        at_least(
            f"{scenario}: x python-socketio",
            ratio(mine, g("python-socketio", scenario, "deliveries_per_s")),
            5,
        )
        at_least(
            f"{scenario}: x websockets.broadcast",
            ratio(mine, g("websockets", scenario, "deliveries_per_s")),
            0.9,
        )
        at_least(
            f"{scenario}: x Node socket.io",
            ratio(mine, g("node-socketio", scenario, "deliveries_per_s")),
            1,
        )
    us = g(subject, "cpu", "server_us_per_delivery")
    at_most(
        "CPU per delivery: x websockets.broadcast",
        ratio(us, g("websockets", "cpu", "server_us_per_delivery")),
        1.2,
    )
    at_most(
        "CPU per delivery: x Node socket.io",
        ratio(us, g("node-socketio", "cpu", "server_us_per_delivery")),
        1,
    )
    p99 = g(subject, "latency", "p99_ms")
    at_most("p99 at 20k deliveries/s, ms", p99, 20)
    at_most(
        "p99 at 20k deliveries/s: x Node socket.io",
        ratio(p99, g("node-socketio", "latency", "p99_ms")),
        1,
    )
    at_most("KiB per idle connection", g(subject, "idle", "kib_per_connection"), 20)
    at_least("idle connections held", g(subject, "idle", "connections"), 10_000)
    at_least("redis:// two nodes fan-out: x memory:// one node",
             ratio(g("roomcast-redis-2", "fanout", "deliveries_per_s"),
                   g(subject, "fanout", "deliveries_per_s")), 0.6)  # fmt: skip
    rows = ["| target | measured | wanted | |", "|---|---:|---:|---|"]
    for label, value, wanted, ok in checks:
        verdict = "not measured" if ok is None else "met" if ok else "**missed**"
        rows.append(f"| {label} | {fmt(value, ',.2f')} | {wanted} | {verdict} |")
    return "\n".join(rows)


START, END = "<!-- results:start -->", "<!-- results:end -->"


def render(report: dict[str, Any]) -> str:
    """The run's machine line and both tables."""
    m = report["machine"]
    return (
        f"Run of {report['started']} on {m['nproc']} x {m['cpu_model']}, Python {m['python']}, "
        f"Node {m['node']}, Linux {m['kernel']}; load average at the start "
        f"{', '.join(f'{x:.2f}' for x in m['load_average_at_start'])}.\n\n"
        f"{results_table(report)}\n\nTargets (roomcast on memory://):\n\n"
        f"{targets_table(report)}\n"
    )


def main(argv: list[str]) -> None:
    """Print the tables, or write them into a document between the markers."""
    report = json.loads(Path(argv[0]).read_text())
    text = render(report)
    if len(argv) == 3 and argv[1] == "--update":
        doc = Path(argv[2])
        before, rest = doc.read_text().split(START, 1)
        after = rest.split(END, 1)[1]
        doc.write_text(f"{before}{START}\n{text}{END}{after}")
    else:
        print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
