"""Blast radius: does a failing payments dependency take the catalog down with it?

An app (uvicorn, its own process) serves ``/pay`` (calls payments) and
``/catalog`` (calls the catalog); a load generator (another process) drives
both routes at once with closed-loop clients; the upstreams are
fault-injecting servers on loopback. For each scenario (healthy, payments
hung, payments answering 500, payments refusing connections, payments slow)
three app variants run in turn in the same session: a plain shared
``httpx.AsyncClient``, a hand-assembled peer stack (tenacity + aiobreaker + a
CapacityLimiter), and seawall.

Run: ``python bench/blast_radius.py`` (about 6 minutes; ``--duration`` per
run, ``--quick`` for a short smoke run). Everything stays on 127.0.0.1, and
every loop is bounded in time.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from seawall.testing import Fault, FaultyUpstream

HERE = Path(__file__).parent
VARIANTS = ("plain", "peers", "seawall")
SCENARIOS: dict[str, Fault | None] = {
    "healthy": Fault.ok(),
    "hung": Fault.latency(10.0),
    "500s": Fault.error(500),
    "refused": None,  # payments' URL points at a closed port
    "slow": Fault.latency(2.0),
}


def pct(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def peak_rss_mib(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of a process, in MiB, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


class App:
    def __init__(self, variant: str, payments: str, catalog: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "blast_apps.py"), variant, payments, catalog],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"{variant} app did not start: {line!r}")
        self.url = f"http://127.0.0.1:{line.split()[1]}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


def run_one(
    variant: str, scenario: str, upstream: FaultyUpstream, args: argparse.Namespace
) -> dict[str, Any]:
    upstream.reset()
    payments = (
        upstream.url
        if SCENARIOS[scenario] is not None
        else f"http://127.0.0.1:{FaultyUpstream.refused_port()}"
    )
    app = App(variant, payments, upstream.url)
    try:
        with httpx.Client(timeout=5.0) as http:  # warm: pools, and one good catalog answer
            for _ in range(5):
                http.get(app.url + "/catalog")
        fault = SCENARIOS[scenario]
        if fault is not None:
            upstream.route("/charges", fault)
        rss_start, _ = peak_rss_mib(app.proc.pid)
        load = subprocess.run(
            [
                sys.executable,
                str(HERE / "blast_load.py"),
                app.url,
                str(args.duration),
                str(args.pay_clients),
                str(args.catalog_clients),
                str(args.think),
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=args.duration + 60,
        )
        rss_end, rss_peak = peak_rss_mib(app.proc.pid)
    finally:
        app.stop()
    samples = json.loads(load.stdout)
    result: dict[str, Any] = {
        "rss_start_mib": rss_start,
        "rss_end_mib": rss_end,
        "rss_peak_mib": rss_peak,
    }
    for route in ("/catalog", "/pay"):
        rows = [s for s in samples if s[1] == route]
        lat = [s[2] for s in rows]
        statuses = Counter(s[3] for s in rows)
        late = [s[2] for s in rows if s[0] >= args.duration / 2]  # the fault's second half
        result[route] = {
            "requests": len(rows),
            "p50_ms": pct(lat, 50) * 1000,
            "p99_ms": pct(lat, 99) * 1000,
            "late_p50_ms": pct(late, 50) * 1000,
            "errors": sum(n for k, n in statuses.items() if not k.startswith("2")),
            "statuses": dict(statuses),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load per run")
    parser.add_argument("--pay-clients", type=int, default=100)
    parser.add_argument("--catalog-clients", type=int, default=20)
    parser.add_argument("--think", type=float, default=1.0)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--quick", action="store_true", help="5 s runs, 30 /pay clients")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.pay_clients, args.catalog_clients = 5.0, 30, 10
    scenarios = args.scenarios.split(",")
    variants = args.variants.split(",")
    results: dict[str, dict[str, Any]] = {v: {} for v in variants}
    with FaultyUpstream() as upstream:
        for scenario in scenarios:
            for variant in variants:  # the variants in turn, in one session
                print(f"... {scenario:8} {variant:8}", file=sys.stderr, flush=True)
                results[variant][scenario] = run_one(variant, scenario, upstream, args)
    print(
        f"\n{args.pay_clients} /pay and {args.catalog_clients} /catalog clients, {args.think:g} s think time, "
        f"{args.duration:g} s per run\n"
    )
    header = (
        "| scenario | variant | /catalog p50 ms | /catalog p99 ms | /catalog errors | "
        "p99 vs healthy | /pay p50 ms | /pay p99 ms | /pay p50 2nd half ms | /pay statuses | peak RSS MiB | RSS start→end MiB |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for scenario in scenarios:
        for variant in variants:
            r = results[variant][scenario]
            base = results[variant].get("healthy", r)["/catalog"]["p99_ms"]
            c, p = r["/catalog"], r["/pay"]
            ratio = c["p99_ms"] / base if base else math.nan
            statuses = ", ".join(f"{k}: {v}" for k, v in sorted(p["statuses"].items()))
            print(
                f"| {scenario} | {variant} | {c['p50_ms']:.0f} | {c['p99_ms']:.0f} | "
                f"{c['errors']}/{c['requests']} | {ratio:.2f}x | {p['p50_ms']:.0f} | {p['p99_ms']:.0f} | "
                f"{p['late_p50_ms']:.0f} | {statuses} | {r['rss_peak_mib']:.0f} | "
                f"{r['rss_start_mib']:.0f}→{r['rss_end_mib']:.0f} |"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
