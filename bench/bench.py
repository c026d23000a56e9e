#!/usr/bin/env python3
"""Helpers for bench/run.sh (Python 3.11, standard library only).

Subcommands:
  generate   write the batch files (gzip JSON, 10,000 points each) and the same rows as CSV
  batch      send one stage's batch files with bounded concurrency; time it
  copy       load one stage's CSV with psql's \\copy; time it with the same clock
  summary    sequential uncached summary requests per period; median and p99
  wrk        parse a wrk output file into JSON
  report     build the markdown table from everything the run recorded

Every measurement writes one JSON file; `report` reads them back. Every loop here is bounded
by a count (files, requests) and every network call by a socket timeout.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import gzip
import http.client
import json
import math
import multiprocessing
import os
import random
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

BATCH_POINTS = 10_000
SPAN = dt.timedelta(days=30)
PERIODS = ("all", "daily", "hourly")


def die(message: str) -> None:
    print(f"bench.py: error: {message}", file=sys.stderr)
    sys.exit(1)


# --- generate ---------------------------------------------------------------------------------
#
# Point i of N (0 <= i < N) is recorded at start + i * 30 days / N, so the N points are spread
# evenly over the 30 days before generation, in time order. Stage "a" (the first 10%, loaded
# before the 1M measurement) is every tenth point (i % 10 == 0), stage "b" the other nine in
# ten; each stage is itself in time order and covers the whole 30 days, so the summaries at
# 10% have data in the daily and hourly windows too. Values are log-normal (median ~20, a
# latency in ms), three decimals, the same text in the JSON and the CSV. Each file's values
# come from a generator seeded by the stage and the file number, so the data is reproducible
# whatever the number of worker processes.


def stage_size(stage: str, n: int) -> int:
    a = (n + 9) // 10
    return a if stage == "a" else n - a


def stage_index(stage: str, m: int) -> int:
    """The global index of the m-th point of a stage."""
    if stage == "a":
        return 10 * m
    return 10 * (m // 9) + (m % 9) + 1


def _generate_file(job: tuple) -> tuple[str, int, str]:
    stage, file_no, first, count, n, start_us, span_us, metric_type, out_dir = job
    rng = random.Random(f"{stage}-{file_no}")
    json_items = []
    csv_lines = []
    last_second = None
    second_text = ""
    for m in range(first, first + count):
        i = stage_index(stage, m)
        t_us = start_us + (i * span_us) // n
        second, micros = divmod(t_us, 1_000_000)
        if second != last_second:
            second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            last_second = second
        stamp = f"{second_text}.{micros // 1000:03d}Z"
        value = f"{rng.lognormvariate(3.0, 0.6):.3f}"
        json_items.append(f'{{"timestamp":"{stamp}","value":{value},"type":"{metric_type}"}}')
        csv_lines.append(f"{metric_type},{value},{stamp}\n")
    body = ('{"metrics":[' + ",".join(json_items) + "]}").encode()
    name = f"{stage}_{file_no:05d}.json.gz"
    (Path(out_dir) / name).write_bytes(gzip.compress(body, compresslevel=6, mtime=0))
    return name, count, "".join(csv_lines)


def cmd_generate(args: argparse.Namespace) -> None:
    n = args.points
    if n < 10:
        die("--points must be at least 10")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    end = dt.datetime.now(dt.UTC).replace(microsecond=0)
    start = end - SPAN
    start_us = int(start.timestamp()) * 1_000_000
    span_us = int(SPAN.total_seconds()) * 1_000_000
    began = time.perf_counter()
    manifest = {
        "points": n,
        "type": args.type,
        "start": start.isoformat().replace("+00:00", "Z"),
        "end": end.isoformat().replace("+00:00", "Z"),
        "stages": {},
    }
    workers = max(1, args.workers or os.cpu_count() or 1)
    with multiprocessing.Pool(workers) as pool:
        for stage in ("a", "b"):
            size = stage_size(stage, n)
            jobs = [
                (stage, k, first, min(BATCH_POINTS, size - first), n, start_us, span_us,
                 args.type, str(out))
                for k, first in enumerate(range(0, size, BATCH_POINTS))
            ]
            files = []
            with open(out / f"{stage}.csv", "w", encoding="ascii") as csv:
                # imap keeps the order, so the CSV's rows are in the batch files' order.
                for name, count, text in pool.imap(_generate_file, jobs, chunksize=1):
                    csv.write(text)
                    files.append({"file": name, "points": count})
            manifest["stages"][stage] = {"points": size, "files": files, "csv": f"{stage}.csv"}
    manifest["generate_seconds"] = round(time.perf_counter() - began, 2)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    gz_bytes = sum(p.stat().st_size for p in out.glob("*.json.gz"))
    print(
        f"generated {n:,} points ({len(manifest['stages']['a']['files'])}+"
        f"{len(manifest['stages']['b']['files'])} batch files, {gz_bytes / 1e6:.1f} MB gzip) "
        f"in {manifest['generate_seconds']} s with {workers} processes"
    )


# --- batch ------------------------------------------------------------------------------------


def cmd_batch(args: argparse.Namespace) -> None:
    data = Path(args.data)
    manifest = json.loads((data / "manifest.json").read_text())
    files = manifest["stages"][args.stage]["files"]
    lock = threading.Lock()
    pending = list(reversed(files))
    failures: list[str] = []
    accepted = [0]
    requests = [0]

    def worker() -> None:
        conn = http.client.HTTPConnection(args.host, args.port, timeout=args.timeout)
        try:
            while True:
                with lock:
                    if failures or not pending:
                        return
                    item = pending.pop()
                body = (data / item["file"]).read_bytes()
                try:
                    conn.request(
                        "POST", "/api/metrics/batch", body=body,
                        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
                    )
                    response = conn.getresponse()
                    payload = response.read()
                except (OSError, http.client.HTTPException) as error:
                    with lock:
                        failures.append(f"{item['file']}: {error!r}")
                    return
                problem = None
                if response.status != 201:
                    problem = f"status {response.status}: {payload[:300]!r}"
                else:
                    try:
                        got = json.loads(payload).get("accepted")
                    except ValueError:
                        got = None
                    if got != item["points"]:
                        problem = f"accepted {got!r}, sent {item['points']}"
                with lock:
                    requests[0] += 1
                    if problem:
                        failures.append(f"{item['file']}: {problem}")
                        return
                    accepted[0] += item["points"]
        finally:
            conn.close()

    began = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - began
    if failures:
        die(f"batch stage {args.stage}: {len(failures)} failed request(s), first: {failures[0]}")
    result = {
        "stage": args.stage,
        "points": accepted[0],
        "requests": requests[0],
        "concurrency": args.concurrency,
        "seconds": seconds,
        "points_per_second": accepted[0] / seconds,
    }
    Path(args.result).write_text(json.dumps(result, indent=1))
    print(
        f"batch stage {args.stage}: {accepted[0]:,} points in {requests[0]} requests, all 201, "
        f"{seconds:.2f} s = {result['points_per_second']:,.0f} points/s"
    )


# --- copy -------------------------------------------------------------------------------------


def cmd_copy(args: argparse.Namespace) -> None:
    data = Path(args.data)
    manifest = json.loads((data / "manifest.json").read_text())
    stage = manifest["stages"][args.stage]
    csv = (data / stage["csv"]).resolve()
    command = (
        f"\\copy {args.table} (metric_type, value, recorded_at) from '{csv}' with (format csv)"
    )
    # psql takes its connection from PGHOST/PGPORT/PGUSER/PGPASSWORD/PGDATABASE.
    began = time.perf_counter()
    done = subprocess.run(
        ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-c", command],
        capture_output=True, text=True, timeout=args.timeout,
    )
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        die(f"\\copy failed: {done.stderr.strip()}")
    match = re.search(r"COPY (\d+)", done.stdout)
    rows = int(match.group(1)) if match else -1
    if rows != stage["points"]:
        die(f"\\copy loaded {rows} rows, expected {stage['points']}: {done.stdout!r}")
    result = {
        "stage": args.stage,
        "rows": rows,
        "seconds": seconds,
        "rows_per_second": rows / seconds,
    }
    Path(args.result).write_text(json.dumps(result, indent=1))
    print(f"\\copy stage {args.stage}: {rows:,} rows in {seconds:.2f} s = {rows / seconds:,.0f} rows/s")


# --- summary ----------------------------------------------------------------------------------


def nearest_rank(sorted_values: list[float], q: float) -> float:
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def cmd_summary(args: argparse.Namespace) -> None:
    """A period whose request fails (not a 200 with X-Cache MISS, or count 0 for `all`) is
    recorded as an error and the next period is measured: the report marks it FAIL."""
    results = {"points_loaded": args.expect_count, "warmup": args.warmup, "periods": {}}
    for period in PERIODS:
        path = f"/api/metrics/summary?type={args.type}&period={period}"
        conn = http.client.HTTPConnection(args.host, args.port, timeout=args.timeout)
        times: list[float] = []
        counts = set()
        enrichment: dict[str, int] = {}
        last = None
        error = None
        try:
            for n in range(args.warmup + args.requests):
                began = time.perf_counter()
                conn.request("GET", path)
                response = conn.getresponse()
                payload = response.read()
                elapsed = time.perf_counter() - began
                if response.status != 200:
                    error = f"status {response.status}: {payload[:200].decode(errors='replace')}"
                    break
                if response.getheader("x-cache") != "MISS":
                    error = f"X-Cache {response.getheader('x-cache')!r}, expected MISS"
                    break
                body = json.loads(payload)
                if period == "all" and not body.get("count", 0) > 0:
                    error = f"count {body.get('count')!r}, expected > 0"
                    break
                if n < args.warmup:
                    continue
                times.append(elapsed * 1000)
                counts.add(body.get("count"))
                status = str(body.get("enrichment_status"))
                enrichment[status] = enrichment.get(status, 0) + 1
                last = body
        except (OSError, http.client.HTTPException, ValueError) as exc:
            error = repr(exc)
        finally:
            conn.close()
        times.sort()
        r = {
            "requests": len(times),
            "error": error,
            "counts": sorted(c for c in counts if c is not None),
            "enrichment_status": enrichment,
        }
        if times:
            r.update(median_ms=statistics.median(times), p99_ms=nearest_rank(times, 0.99),
                     min_ms=times[0], max_ms=times[-1])
        if last:
            r["last"] = {k: last.get(k) for k in
                         ("count", "average_value", "min_value", "max_value", "latest_value",
                          "p50", "p95", "p99")}
        results["periods"][period] = r
        if error:
            print(f"summary {period:6s} at {args.expect_count:,} points: FAILED after "
                  f"{len(times)} requests: {error}", file=sys.stderr)
        else:
            print(
                f"summary {period:6s} at {args.expect_count:,} points: median "
                f"{r['median_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms over {len(times)} requests "
                f"(count {r['counts']}, enrichment {enrichment})"
            )
    Path(args.result).write_text(json.dumps(results, indent=1))


# --- wrk --------------------------------------------------------------------------------------


def parse_wrk(text: str) -> dict:
    def grab(pattern: str, default: str | None = None) -> str | None:
        match = re.search(pattern, text, re.MULTILINE)
        return match.group(1) if match else default

    rps = grab(r"^Requests/sec:\s+([\d.]+)")
    if rps is None:
        die("no Requests/sec line in the wrk output")
    socket = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    latency = {}
    for q in ("50", "99"):
        match = re.search(rf"^\s+{q}(?:\.000)?%\s+([\d.]+)(us|ms|s)\b", text, re.MULTILINE)
        if match:
            scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]
            latency[f"p{q}_ms"] = float(match.group(1)) * scale
    return {
        "requests_per_second": float(rps),
        "requests": int(grab(r"^\s+(\d+) requests in", "0")),
        "non_2xx": int(grab(r"Non-2xx or 3xx responses: (\d+)", "0")),
        "socket_errors": dict(zip(("connect", "read", "write", "timeout"),
                                  map(int, socket.groups()))) if socket else {},
        **latency,
    }


def cmd_wrk(args: argparse.Namespace) -> None:
    parsed = parse_wrk(Path(args.file).read_text())
    Path(args.result).write_text(json.dumps(parsed, indent=1))
    print(json.dumps(parsed))


# --- report -----------------------------------------------------------------------------------


def read_facts(path: Path) -> dict[str, str]:
    facts = {}
    for line in path.read_text().splitlines():
        if "\t" in line:
            key, value = line.split("\t", 1)
            facts[key] = value
    return facts


def cmd_report(args: argparse.Namespace) -> None:
    work = Path(args.work)
    facts = read_facts(work / "facts.tsv")

    def load(name: str) -> dict:
        return json.loads((work / name).read_text())

    live, post = load("wrk-live.json"), load("wrk-post.json")
    batch = [load("batch-a.json"), load("batch-b.json")]
    copy = [load("copy-a.json"), load("copy-b.json")]
    summaries = [load("summary-a.json"), load("summary-b.json")]
    exact = [load("exact-a.json"), load("exact-b.json")]

    rows: list[tuple[str, str, str, str]] = []
    failed: list[str] = []

    def info(item: str, value: str) -> None:
        rows.append((item, value, "", ""))

    def check(item: str, value: str, target: str, ok: bool) -> None:
        rows.append((item, value, target, "PASS" if ok else "**FAIL**"))
        if not ok:
            failed.append(item)

    n = int(facts["points"])
    mode = facts.get("mode", "")
    info("run", f"{facts['started']} UTC, {mode}, N = {n:,} points, took {facts.get('elapsed', '?')}")
    info("machine", f"{facts['nproc']} CPUs ({facts['cpu']}), {facts['memory']} RAM, "
                    f"kernel {facts['kernel']}")
    info("versions", f"PostgreSQL {facts['pg_version']} ({facts['pg_image']}); "
                     f"Redis {facts['redis_version']} ({facts['redis_image']}); "
                     f"{facts['wrk_version']}; {facts['rustc_version']}; psql {facts['psql_version']}; "
                     f"Python {facts['python_version']}")
    info("server", f"{facts['binary']}; {facts['source']}")
    info("settings", facts["settings"])

    ratio = post["requests_per_second"] / live["requests_per_second"]
    load_desc = facts["wrk_load"]
    info("GET /health/live throughput", f"{live['requests_per_second']:,.0f} req/s "
         f"(p50 {live.get('p50_ms', float('nan')):.2f} ms, p99 {live.get('p99_ms', float('nan')):.2f} ms; {load_desc})")
    info("POST /api/metrics throughput", f"{post['requests_per_second']:,.0f} req/s "
         f"(p50 {post.get('p50_ms', float('nan')):.2f} ms, p99 {post.get('p99_ms', float('nan')):.2f} ms; "
         f"{post['requests']:,} requests, {post['non_2xx']} non-2xx, "
         f"rows stored {facts['post_rows_stored']}; socket errors {post['socket_errors']})")
    check("single POST ÷ /health/live", f"{ratio:.3f}", "≥ 0.20", ratio >= 0.20)

    b_points = sum(b["points"] for b in batch)
    b_seconds = sum(b["seconds"] for b in batch)
    c_rows = sum(c["rows"] for c in copy)
    c_seconds = sum(c["seconds"] for c in copy)
    b_rate, c_rate = b_points / b_seconds, c_rows / c_seconds
    info("batch ingest (POST /api/metrics/batch, gzip)",
         f"{b_rate:,.0f} points/s ({b_points:,} points in {b_seconds:.1f} s, "
         f"{batch[0]['concurrency']} concurrent requests of 10,000 points; every response 201)")
    info("psql \\copy into metrics_copy", f"{c_rate:,.0f} rows/s ({c_rows:,} rows in {c_seconds:.1f} s)")
    check("batch ÷ \\copy", f"{b_rate / c_rate:.3f}", "≥ 0.40", b_rate / c_rate >= 0.40)

    for stage, summary, ex in zip(("a", "b"), summaries, exact):
        loaded = summary["points_loaded"]
        last_stage = stage == "b"
        for period in PERIODS:
            p = summary["periods"][period]
            label = f"uncached summary {period} at {loaded:,} points"
            if p["counts"]:
                label += f" (count {', '.join(f'{c:,}' for c in p['counts'])})"
            if p["error"]:
                value = f"error after {p['requests']} requests: {p['error']}"
            else:
                value = f"median {p['median_ms']:.1f} ms, p99 {p['p99_ms']:.1f} ms"
            target = ""
            if last_stage:
                target = "median ≤ 50 ms" + ("" if loaded >= 10_000_000 else " (set for 10 M)")
            if last_stage or p["error"]:
                ok = not p["error"] and (not last_stage or p["median_ms"] <= 50.0)
                check(label, value, target, ok)
            else:
                info(label, value)
        got = summary["periods"]["all"].get("last")
        if not got:
            check(f"summary all: exact count and percentiles at {loaded:,} points",
                  "no summary", "", False)
            continue
        check(f"summary all: count exact at {loaded:,} points",
              f"{got['count']:,} (stored {ex['count']:,})", "= stored rows",
              got["count"] == ex["count"] == loaded)
        errors = []
        for key, want in zip(("p50", "p95", "p99"), ex["percentiles"]):
            errors.append((key, abs(got[key] - want) / abs(want) if want else 0.0))
        worst = max(e for _, e in errors)
        check(f"summary all: p50/p95/p99 vs percentile_cont at {loaded:,} points",
              ", ".join(f"{k} {e * 100:.3f}%" for k, e in errors), "≤ 1% relative error",
              worst <= 0.01)

    rss = int(facts["rss_kb"]) / 1024
    check("peak RSS of the server (VmHWM)",
          f"{rss:.1f} MB (peak after the single writes {int(facts['rss_after_single_kb']) / 1024:.1f} MB, "
          f"after the batch loads {int(facts['rss_after_batch_kb']) / 1024:.1f} MB)",
          "≤ 100 MB", rss <= 100.0)
    info("peak RSS of the summary server (VmHWM)", f"{int(facts['rss_summary_kb']) / 1024:.1f} MB")
    info("logs (RUST_LOG=warn)", facts["log_lines"])

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [
        f"### Benchmark {mode}, N = {n:,} points, {facts['started']} UTC",
        "",
        "| item | measured | target | result |",
        "|---|---|---|---|",
        *(f"| {cell(a)} | {cell(b)} | {c} | {d} |" for a, b, c, d in rows),
        "",
        "Notes: " + facts["notes"],
        "",
        f"Overall: {'all targets met' if not failed else 'FAILED: ' + '; '.join(failed)}.",
    ]
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    print(f"(written to {args.out})")
    if failed and args.strict:
        sys.exit(2)


def cmd_soak_report(args: argparse.Namespace) -> None:
    """One row per soak minute (oha's JSON and the server's RSS), and whether both stay flat."""
    work = Path(args.work)
    facts = read_facts(work / "facts.tsv")
    rss = dict(line.split("\t") for line in (work / "soak-rss.tsv").read_text().split("\n") if line)
    minutes = []
    for minute in range(1, args.minutes + 1):
        run = json.loads((work / f"soak-{minute}.json").read_text())
        statuses = run.get("statusCodeDistribution", {})
        minutes.append({
            "minute": minute,
            "requests": sum(statuses.values()),
            "rate": run["summary"]["requestsPerSec"],
            "p50_ms": run["latencyPercentiles"]["p50"] * 1000,
            "p99_ms": run["latencyPercentiles"]["p99"] * 1000,
            "not_201": sum(n for code, n in statuses.items() if code != "201"),
            # Requests still in flight when the minute ends are "aborted due to deadline".
            "errors": sum(n for error, n in run.get("errorDistribution", {}).items()
                          if "deadline" not in error),
            "rss_mb": int(rss[str(minute)]) / 1024,
        })
    post = json.loads((work / "wrk-post.json").read_text())
    p99s = sorted(m["p99_ms"] for m in minutes)
    rsses = sorted(m["rss_mb"] for m in minutes)
    median_p99, median_rss = p99s[len(p99s) // 2], rsses[len(rsses) // 2]
    rss_flat = rsses[-1] - rsses[0] <= 0.10 * median_rss
    p99_flat = p99s[-1] <= 2 * median_p99
    clean = all(m["not_201"] == 0 and m["errors"] == 0 for m in minutes)
    lines = [
        f"#### Soak, {args.minutes} minutes at half the maximum single-write rate, {facts['started']} UTC",
        "",
        f"Machine: {facts['nproc']} CPUs ({facts['cpu']}), {facts['memory']} RAM, kernel {facts['kernel']}; "
        f"PostgreSQL {facts['pg_version']}, Redis {facts['redis_version']}; oha {facts.get('oha_version', '?')}; "
        f"server {facts['binary']}, {facts['source']}.",
        f"Maximum measured first: {post['requests_per_second']:,.0f} writes/s ({facts.get('wrk_load', '?')}); "
        f"held: {int(facts['soak_rate']):,} writes/s with oha -q, {facts.get('elapsed', '?')} in all; "
        f"server log: {facts.get('log_lines', '?')}.",
        "",
        "| minute | requests | achieved/s | p50 ms | p99 ms | not 201 | errors | RSS MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in minutes:
        lines.append(f"| {m['minute']} | {m['requests']:,} | {m['rate']:,.0f} | {m['p50_ms']:.2f} | "
                     f"{m['p99_ms']:.2f} | {m['not_201']} | {m['errors']} | {m['rss_mb']:.1f} |")
    lines += [
        "",
        f"- RSS flat (max − min ≤ 10% of the median, {median_rss:.1f} MB): "
        f"{rsses[-1] - rsses[0]:.1f} MB → {'PASS' if rss_flat else '**FAIL**'}",
        f"- p99 flat (every minute ≤ 2 × the median p99, {median_p99:.2f} ms): "
        f"max {p99s[-1]:.2f} ms → {'PASS' if p99_flat else '**FAIL**'}",
        f"- every response 201, no connection errors: {'PASS' if clean else '**FAIL**'}",
    ]
    report = "\n".join(lines) + "\n"
    Path(args.out).write_text(report)
    print(report)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate")
    p.add_argument("--points", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--type", default="bench_latency")
    p.add_argument("--workers", type=int, default=0)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("batch")
    p.add_argument("--data", required=True)
    p.add_argument("--stage", choices=("a", "b"), required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--result", required=True)
    p.set_defaults(func=cmd_batch)

    p = sub.add_parser("copy")
    p.add_argument("--data", required=True)
    p.add_argument("--stage", choices=("a", "b"), required=True)
    p.add_argument("--table", default="metrics_copy")
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--result", required=True)
    p.set_defaults(func=cmd_copy)

    p = sub.add_parser("summary")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--type", default="bench_latency")
    p.add_argument("--requests", type=int, default=50)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--expect-count", type=int, required=True)
    p.add_argument("--result", required=True)
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("wrk")
    p.add_argument("--file", required=True)
    p.add_argument("--result", required=True)
    p.set_defaults(func=cmd_wrk)

    p = sub.add_parser("report")
    p.add_argument("--work", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--strict", action="store_true")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("soak-report")
    p.add_argument("--work", required=True)
    p.add_argument("--minutes", type=int, required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_soak_report)

    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
