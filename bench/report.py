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


def join_table(report: dict[str, Any]) -> str:
    """Joins per second (and the mean join time of the first and the last tenth), presence on
    and off, and the reconnect storm, for the servers that ran them."""
    rows = [
        "| server | 1,000 into one room: joins/s | first / last tenth ms "
        "| 10,000 into rooms of 10: joins/s | the same without presence: 1 x 1,000 / 10 x 10 "
        "| first / last tenth ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in report["servers"]:

        def g(scenario: str, key: str, name: str = name) -> float | None:
            return get(report, name, scenario, key)

        if g("join_one_room", "connections_per_s") is None:
            continue
        rows.append(
            f"| {name} | {fmt(g('join_one_room', 'connections_per_s'))} "
            f"| {fmt(g('join_one_room', 'first_tenth_ms'))} / "
            f"{fmt(g('join_one_room', 'last_tenth_ms'))} "
            f"| {fmt(g('join_rooms_of_10', 'connections_per_s'))} "
            f"| {fmt(g('join_one_room_no_presence', 'connections_per_s'))} / "
            f"{fmt(g('join_rooms_of_10_no_presence', 'connections_per_s'))} "
            f"| {fmt(g('join_one_room_no_presence', 'first_tenth_ms'))} / "
            f"{fmt(g('join_one_room_no_presence', 'last_tenth_ms'))} |"
        )
    storm = report["servers"].get("roomcast-redis-1", {}).get("storm")
    if storm:
        rows += [
            "",
            "| reconnect storm | clients | recovered | not recovered | gaps | refused "
            "| attempts | s to the last recovery | median s | server peak RSS MiB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| roomcast-redis-1 | {fmt(storm.get('connections'))} "
            f"| {fmt(storm.get('recovered'))} | {fmt(storm.get('not_recovered'))} "
            f"| {fmt(storm.get('gaps'))} | {fmt(storm.get('refused'))} "
            f"| {fmt(storm.get('attempts'))} | {fmt(storm.get('recovery_seconds'), '.1f')} "
            f"| {fmt(storm.get('recovery_p50_s'), '.1f')} "
            f"| {fmt(storm.get('server_peak_rss_mib'), '.0f')} |",
        ]
    big = report["servers"].get("roomcast", {}).get("idle100k")
    if big:
        rows += [
            "",
            "| 100,000 idle connections | connections | connections/s | KiB per connection "
            "| RSS MiB |",
            "|---|---:|---:|---:|---:|",
            f"| roomcast | {fmt(big.get('connections'))} | {fmt(big.get('connections_per_s'))} "
            f"| {fmt(big.get('kib_per_connection'), '.1f')} "
            f"| {fmt(big.get('rss_after_mib'), '.0f')} |",
        ]
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

    # Floors: fan-out as in docs/benchmarks.md before issue 17 (5.4x websockets), chat 1.2x.
    for scenario, ws_floor, sio_floor in (("fanout", 5.4, 5.0), ("chat", 1.2, 1.2)):
        mine = g(subject, scenario, "deliveries_per_s")
        at_least(
            f"{scenario}: x python-socketio",
            ratio(mine, g("python-socketio", scenario, "deliveries_per_s")),
            5,
        )
        at_least(
            f"{scenario}: x websockets.broadcast",
            ratio(mine, g("websockets", scenario, "deliveries_per_s")),
            ws_floor,
        )
        at_least(
            f"{scenario}: x Node socket.io",
            ratio(mine, g("node-socketio", scenario, "deliveries_per_s")),
            sio_floor,
        )
    chat = g(subject, "chat", "deliveries_per_s")
    redis1 = g("roomcast-redis-1", "chat", "deliveries_per_s")
    at_least("chat on redis:// (1 node): x memory://", ratio(redis1, chat), 0.5)
    at_least("chat on redis://: 2 nodes x 1 node",
             ratio(g("roomcast-redis-2", "chat", "deliveries_per_s"), redis1), 0.9)  # fmt: skip
    for phase, label in (("join_one_room", "join 1,000 into one room"),
                         ("join_rooms_of_10", "join 10,000 into rooms of 10")):  # fmt: skip
        theirs = g("websockets", phase, "connections_per_s")
        at_least(f"{label}, presence on: x websockets",
                 ratio(g(subject, phase, "connections_per_s"), theirs), 0.33)  # fmt: skip
        quiet = g(subject, f"{phase}_no_presence", "connections_per_s")
        at_least(f"{label}, presence off: x websockets", ratio(quiet, theirs), 1)
    storm = "roomcast-redis-1"
    at_most("reconnect storm (10,000 clients): s to the last recovery",
            g(storm, "storm", "recovery_seconds"), 15)  # fmt: skip
    at_least("reconnect storm: clients recovered",
             g(storm, "storm", "recovered"), 10_000)  # fmt: skip
    at_most("reconnect storm: clients refused", g(storm, "storm", "refused"), 0)
    us = g(subject, "cpu", "server_us_per_delivery")
    at_most(
        "CPU per delivery: x websockets.broadcast",
        ratio(us, g("websockets", "cpu", "server_us_per_delivery")),
        0.9,
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
    at_most("KiB per idle connection", g(subject, "idle", "kib_per_connection"), 15)
    at_least("idle connections held", g(subject, "idle", "connections"), 10_000)
    at_least("idle connections held (idle100k)", g(subject, "idle100k", "connections"), 100_000)
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
        f"{results_table(report)}\n\n{join_table(report)}\n\n"
        "Targets (roomcast on memory://, unless the row names another):\n\n"
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
