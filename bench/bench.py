#!/usr/bin/env python3
"""Helpers for bench/run.sh (Python 3.11, standard library only).

Subcommands:
  generate   write the batch files (gzip JSON, 10,000 points each) and the same rows as CSV
  batch      send one stage's batch files with bounded concurrency; time it
  copy       load one stage's CSV (or any CSV) with psql's \\copy; time it with the same clock
  summary    sequential uncached summary requests per period; median and p99
  summary-user  the same the user's way: main server, Redis FLUSHALL before each request, a
             new connection each, no warm-up; its delay from the end of the load
  wrk        parse a wrk output file into JSON
  report     build the markdown table from everything the run recorded
  remote-write-report  the table of run.sh --remote-write (the same rows end the full run's)
  soak-report  the soak's table, one row per minute
  memory     one scenario of run.sh --memory (concurrent large or gzip-bomb requests) against
             one server process, watching its RSS; optionally a small client's single writes
  memory-report  the memory scenarios' table

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
    # Wall clock too: the user's-way summaries measure their delay from this moment.
    ended_unix = time.time()
    if failures:
        die(f"batch stage {args.stage}: {len(failures)} failed request(s), first: {failures[0]}")
    result = {
        "stage": args.stage,
        "points": accepted[0],
        "requests": requests[0],
        "concurrency": args.concurrency,
        "seconds": seconds,
        "ended_unix": ended_unix,
        "points_per_second": accepted[0] / seconds,
    }
    Path(args.result).write_text(json.dumps(result, indent=1))
    print(
        f"batch stage {args.stage}: {accepted[0]:,} points in {requests[0]} requests, all 201, "
        f"{seconds:.2f} s = {result['points_per_second']:,.0f} points/s"
    )


# --- copy -------------------------------------------------------------------------------------


def cmd_copy(args: argparse.Namespace) -> None:
    """One stage of the generated data (--data, --stage), or any CSV (--csv, --expect-rows)
    into the columns --columns."""
    if args.csv:
        if args.expect_rows is None:
            die("--csv needs --expect-rows")
        csv = Path(args.csv).resolve()
        expected = args.expect_rows
        stage_name = csv.name
    else:
        if not (args.data and args.stage):
            die("copy needs --data and --stage, or --csv")
        data = Path(args.data)
        manifest = json.loads((data / "manifest.json").read_text())
        stage = manifest["stages"][args.stage]
        csv = (data / stage["csv"]).resolve()
        expected = stage["points"]
        stage_name = args.stage
    command = f"\\copy {args.table} ({args.columns}) from '{csv}' with (format csv)"
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
    if rows != expected:
        die(f"\\copy loaded {rows} rows, expected {expected}: {done.stdout!r}")
    result = {
        "stage": stage_name,
        "table": args.table,
        "columns": args.columns,
        "rows": rows,
        "seconds": seconds,
        "rows_per_second": rows / seconds,
    }
    Path(args.result).write_text(json.dumps(result, indent=1))
    print(f"\\copy {stage_name} into {args.table}: {rows:,} rows in {seconds:.2f} s = {rows / seconds:,.0f} rows/s")


# --- summary ----------------------------------------------------------------------------------


def nearest_rank(sorted_values: list[float], q: float) -> float:
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def checked_answer(period: str, response: http.client.HTTPResponse,
                   payload: bytes) -> tuple[dict | None, str | None]:
    """An uncached summary's body, or why the answer is not one: a 200 with X-Cache: MISS
    and JSON, with count > 0 for `all`."""
    if response.status != 200:
        return None, f"status {response.status}: {payload[:200].decode(errors='replace')}"
    if response.getheader("x-cache") != "MISS":
        return None, f"X-Cache {response.getheader('x-cache')!r}, expected MISS"
    try:
        body = json.loads(payload)
    except ValueError as exc:
        return None, repr(exc)
    if period == "all" and not body.get("count", 0) > 0:
        return None, f"count {body.get('count')!r}, expected > 0"
    return body, None


def period_result(times: list[float], error: str | None, counts: set, enrichment: dict,
                  last: dict | None, fields: tuple[str, ...]) -> dict:
    """One period's figures: median and nearest-rank p99 of the times (ms), the counts seen,
    the enrichment statuses, and `fields` of the last answer."""
    times = sorted(times)
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
        r["last"] = {k: last.get(k) for k in fields}
    return r


def cmd_summary(args: argparse.Namespace) -> None:
    """A period whose request fails (not a 200 with X-Cache MISS, or count 0 for `all`) is
    recorded as an error and the next period is measured: the report marks it FAIL."""
    results = {"points_loaded": args.expect_count, "extra_rows": args.extra_rows,
               "warmup": args.warmup, "periods": {}}
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
                body, error = checked_answer(period, response, payload)
                if error:
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
        r = period_result(times, error, counts, enrichment, last,
                          ("count", "average_value", "min_value", "max_value", "latest_value",
                           "p50", "p95", "p99"))
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


# --- summary-user -----------------------------------------------------------------------------
#
# The user's way: through the main server (the one with Redis), its summary cache emptied
# (FLUSHALL) before every request so each one computes, a new TCP connection per request, and
# nothing excluded as warm-up: what a dashboard sees right after a bulk load, or while writes
# keep arriving. Each request is timed from before the connect to the last byte. The FLUSHALL
# goes to the Redis container's published port on 127.0.0.1 and is not timed.


def redis_flushall(sock) -> None:
    """One FLUSHALL in RESP on an open socket; raises unless Redis answers +OK."""
    sock.sendall(b"*1\r\n$8\r\nFLUSHALL\r\n")
    reply = b""
    while not reply.endswith(b"\r\n") and len(reply) < 512:
        chunk = sock.recv(512)
        if not chunk:
            raise OSError("Redis closed the connection")
        reply += chunk
    if reply != b"+OK\r\n":
        raise OSError(f"FLUSHALL answered {reply[:100]!r}")


def pending_deltas(timeout: float) -> int | None:
    """Rows in metric_rollup_deltas (inserts not yet folded into the rollups), through psql."""
    try:
        done = subprocess.run(
            ["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-c",
             "select count(*) from metric_rollup_deltas"],
            capture_output=True, text=True, timeout=timeout,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return int(done.stdout.strip()) if done.returncode == 0 and done.stdout.strip().isdigit() else None


def cmd_summary_user(args: argparse.Namespace) -> None:
    """Like `summary`, a failing period is recorded as an error and the next one is measured."""
    import socket

    if args.host != "127.0.0.1":
        die("the user's-way summaries target 127.0.0.1 only")
    results = {"points_loaded": args.expect_count, "method": "user", "label": args.label,
               "requests_per_period": args.requests, "load_ended_unix": args.load_ended,
               "periods": {}}
    redis = socket.create_connection(("127.0.0.1", args.redis_port), timeout=args.timeout)
    results["deltas_at_start"] = pending_deltas(args.timeout) if args.count_deltas else None
    began_unix = time.time()
    first_start = last_start = None
    try:
        for period in PERIODS:
            path = f"/api/metrics/summary?type={args.type}&period={period}"
            times: list[float] = []
            counts = set()
            enrichment: dict[str, int] = {}
            last = None
            error = None
            for _ in range(args.requests):
                try:
                    redis_flushall(redis)
                except OSError as exc:
                    error = f"Redis FLUSHALL: {exc!r}"
                    break
                conn = http.client.HTTPConnection(args.host, args.port, timeout=args.timeout)
                start_unix = time.time()
                began = time.perf_counter()
                try:
                    conn.connect()
                    conn.request("GET", path)
                    response = conn.getresponse()
                    payload = response.read()
                except (OSError, http.client.HTTPException) as exc:
                    error = repr(exc)
                    break
                finally:
                    conn.close()
                elapsed = time.perf_counter() - began
                first_start = start_unix if first_start is None else first_start
                last_start = start_unix
                body, error = checked_answer(period, response, payload)
                if error:
                    break
                times.append(elapsed * 1000)
                counts.add(body.get("count"))
                status = str(body.get("enrichment_status"))
                enrichment[status] = enrichment.get(status, 0) + 1
                last = body
            r = period_result(times, error, counts, enrichment, last, ("count", "p50", "p95", "p99"))
            results["periods"][period] = r
            if error:
                print(f"summary {period:6s} {args.label}: FAILED after {len(times)} requests: "
                      f"{error}", file=sys.stderr)
            else:
                print(f"summary {period:6s} {args.label}: median {r['median_ms']:.1f} ms, "
                      f"p99 {r['p99_ms']:.1f} ms over {len(times)} requests "
                      f"(count {r['counts']}, enrichment {enrichment})")
    finally:
        redis.close()
    results["seconds"] = time.time() - began_unix
    results["deltas_at_end"] = pending_deltas(args.timeout) if args.count_deltas else None
    if args.load_ended is not None and first_start is not None:
        results["first_request_after_load_s"] = first_start - args.load_ended
        results["last_request_after_load_s"] = last_start - args.load_ended
        print(f"summaries {args.label}: first request {first_start - args.load_ended:.2f} s, "
              f"last {last_start - args.load_ended:.2f} s after the load ended; pending deltas "
              f"{results['deltas_at_start']} at the start, {results['deltas_at_end']} at the end")
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


def write_report(lines: list[str], out: str, exit_failed: bool) -> None:
    """Prints the report, writes it to `out`, and exits 2 when asked to for a failure."""
    text = "\n".join(lines) + "\n"
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text)
    print(text)
    print(f"(written to {out})")
    if exit_failed:
        sys.exit(2)


def setup_rows(facts: dict[str, str], info, run: str) -> None:
    """The rows that say what was measured where: run, machine, versions, server, settings."""
    info("run", f"{facts['started']} UTC, {run}, took {facts.get('elapsed', '?')}")
    info("machine", f"{facts['nproc']} CPUs ({facts['cpu']}), {facts['memory']} RAM, "
                    f"kernel {facts['kernel']}")
    tools = "; ".join(t for t in (facts.get("wrk_version", ""), facts["rustc_version"]) if t)
    info("versions", f"PostgreSQL {facts['pg_version']} ({facts['pg_image']}); "
                     f"Redis {facts['redis_version']} ({facts['redis_image']}); "
                     f"{tools}; psql {facts['psql_version']}; Python {facts['python_version']}")
    info("server", f"{facts['binary']}; {facts['source']}")
    info("settings", facts["settings"])


def remote_write_rows(work: Path, facts: dict[str, str], info, check) -> None:
    """The remote-write section's rows (run.sh remote_write_section): its load (the
    remote_write_load example's JSON), the \\copy of the same rows, the JSON batches of the
    same number of points, and the fresh server's peak RSS."""
    def load(name: str) -> dict:
        return json.loads((work / name).read_text())

    rw = load("rw-load.json")
    copy = load("copy-rw.json")
    batch = [load("batch-rw-a.json"), load("batch-rw-b.json")]
    m, w = rw["measured"], rw["warmup"]
    per_request = rw["series_per_request"] * rw["samples_per_series"]

    def statuses(phase: dict) -> str:
        return ", ".join(f"{k:,} × {s}" for s, k in phase["statuses"].items()) or "none"

    def latency(phase: dict) -> str:
        lat = phase.get("latency_ms")
        if not lat:
            return "no requests"
        return (f"latency p50 {lat['p50']:.0f} ms, p90 {lat['p90']:.0f} ms, p99 {lat['p99']:.0f} ms, "
                f"max {lat['max']:.0f} ms")

    info("remote write: load",
         f"{rw['series']:,} distinct series (40 names × 250 targets, 6 labels each), "
         f"{rw['series_per_request']:,} series × {rw['samples_per_series']} samples = {per_request:,} "
         f"samples per request ({rw['mean_body_bytes'] / 1000:.0f} KB snappy, "
         f"{rw['mean_inflated_bytes'] / 1000:.0f} KB protobuf), {rw['requests_per_round']} requests per round, "
         f"{rw['concurrency']} in flight, timestamps {rw['interval_ms'] / 1000:g} s apart and new in every "
         f"round; a fresh server process on the database as it was "
         f"({facts.get('rw_tables', '?')})")
    if w["requests_planned"]:
        info(f"remote write: warm-up ({rw['warmup_rounds']} round, creates the series; not in the ratio)",
             f"{w['samples_per_second']:,.0f} samples/s ({w['samples_accepted']:,} samples in "
             f"{w['seconds']:.1f} s; {statuses(w)}; {latency(w)})")
    info("remote write (POST /api/v1/write)",
         f"{m['samples_per_second']:,.0f} samples/s ({m['samples_accepted']:,} samples in {m['seconds']:.1f} s, "
         f"{m['requests']:,} requests, {rw['rounds']} rounds; {latency(m)})")
    clean = rw["not_204"] == 0 and rw["complete"]
    check("remote write: every response 204, every request sent",
          f"warm-up {statuses(w)}; measured {statuses(m)}"
          + ("" if rw["complete"] else "; stopped at the time bound")
          + f"; rows stored {int(facts['rw_rows_stored']):,}",
          "all 204, rows = samples", clean and int(facts["rw_rows_stored"]) ==
          w["samples_accepted"] + m["samples_accepted"])
    c_rate = copy["rows_per_second"]
    info("psql \\copy of the same rows into bench_copy",
         f"{c_rate:,.0f} rows/s ({copy['rows']:,} rows in {copy['seconds']:.1f} s; columns {copy['columns']})")
    ratio = m["samples_per_second"] / c_rate
    check("remote write ÷ \\copy", f"{ratio:.3f}", "≥ 0.40", ratio >= 0.40)
    b_points = sum(b["points"] for b in batch)
    b_seconds = sum(b["seconds"] for b in batch)
    b_rate = b_points / b_seconds
    info("JSON batch, same server (POST /api/metrics/batch, gzip, one type, no tags)",
         f"{b_rate:,.0f} points/s ({b_points:,} points in {b_seconds:.1f} s, "
         f"{batch[0]['concurrency']} concurrent requests of 10,000 points; every response 201)")
    info("remote write ÷ JSON batch (per sample)", f"{m['samples_per_second'] / b_rate:.3f}")
    cpu_rows(rw, facts, info, [m["samples_accepted"], copy["rows"], b_points])
    rss = int(facts["rw_rss_kb"]) / 1024
    check("peak RSS of the server during the remote write (VmHWM)",
          f"{rss:.1f} MB (idle before {int(facts['rw_idle_rss_kb']) / 1024:.1f} MB; after the JSON "
          f"batches too {int(facts['rw_rss_after_batch_kb']) / 1024:.1f} MB)",
          "≤ 100 MB", rss <= 100.0)
    info("remote-write server log (RUST_LOG=warn)", facts.get("rw_log_lines", "?"))


def cpu_rows(rw: dict, facts: dict[str, str], info, counts: list[int]) -> None:
    """CPU time per sample of the remote write, the \\copy and the JSON batches: the server
    process's (utime + stime) and PostgreSQL's container's (its cgroup), with the machine's
    1-minute load average before and after each. Less disturbed than wall time by other work
    on a shared machine, though not immune (caches, frequency). Left out when unreadable."""
    tick = 1 / int(facts.get("clock_ticks", "100"))

    def from_facts(*keys: str) -> dict | None:
        total = {"server_ticks": 0, "postgres_ns": 0, "loads": []}
        for key in keys:
            fields = facts.get(key, "").split()
            if len(fields) != 6 or "-" in (fields[1], fields[4]) or "-" in (fields[0], fields[3]):
                return None
            total["server_ticks"] += int(fields[3]) - int(fields[0])
            total["postgres_ns"] += int(fields[4]) - int(fields[1])
            total["loads"] += [float(fields[2]), float(fields[5])]
        return total

    phase = rw["measured"].get("cpu") or {}
    measured = None
    if phase.get("server_ticks") is not None and phase.get("postgres_ns") is not None:
        measured = {"server_ticks": phase["server_ticks"], "postgres_ns": phase["postgres_ns"],
                    "loads": [phase["loadavg_before"], phase["loadavg_after"]]}
    parts = [measured, from_facts("rw_copy_cpu"), from_facts("rw_batch_a_cpu", "rw_batch_b_cpu")]
    if any(p is None for p in parts) or any(n <= 0 for n in counts):
        info("CPU time per sample", "not measured (no readable CPU counters)")
        return
    per = []
    for part, n in zip(parts, counts):
        server_us = part["server_ticks"] * tick / n * 1e6
        pg_us = part["postgres_ns"] / 1e9 / n * 1e6
        loads = part["loads"]
        per.append((server_us, pg_us, f"load average {loads[0]:.1f} → {loads[-1]:.1f}"))
    (rs, rp, rl), (_, cp, cl), (bs, bp, bl) = per
    info("CPU time per sample: server + PostgreSQL",
         f"remote write {rs:.1f} + {rp:.1f} = {rs + rp:.1f} µs ({rl}); \\copy (PostgreSQL) {cp:.1f} µs "
         f"per row ({cl}); JSON batch {bs:.1f} + {bp:.1f} = {bs + bp:.1f} µs ({bl})")
    info("CPU-time ratio: \\copy's µs per row ÷ remote write's µs per sample",
         f"{cp / (rs + rp):.3f} (PostgreSQL's alone: {cp / rp:.3f}); against the JSON batch "
         f"{(bs + bp) / (rs + rp):.3f}")


def cmd_remote_write_report(args: argparse.Namespace) -> None:
    work = Path(args.work)
    facts = read_facts(work / "facts.tsv")
    rows: list[tuple[str, str, str, str]] = []
    failed: list[str] = []

    def info(item: str, value: str) -> None:
        rows.append((item, value, "", ""))

    def check(item: str, value: str, target: str, ok: bool) -> None:
        rows.append((item, value, target, "PASS" if ok else "**FAIL**"))
        if not ok:
            failed.append(item)

    setup_rows(facts, info, facts.get("mode", ""))
    remote_write_rows(work, facts, info, check)

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [
        f"### Remote write, {facts['started']} UTC",
        "",
        "| item | measured | target | result |",
        "|---|---|---|---|",
        *(f"| {cell(a)} | {cell(b)} | {c} | {d} |" for a, b, c, d in rows),
        "",
        "Notes: " + facts["rw_notes"],
        "",
        f"Overall: {'all targets met' if not failed else 'FAILED: ' + '; '.join(failed)}.",
    ]
    write_report(lines, args.out, bool(failed) and args.strict)


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
    setup_rows(facts, info, f"{mode}, N = {n:,} points")

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

    def user_rows(u: dict, last_stage: bool) -> None:
        """The user's-way rows of one measurement (summary-user's JSON)."""
        loaded = u["points_loaded"]
        for period in PERIODS:
            p = u["periods"][period]
            label = f"summary {period}, user's way {u['label']} at {loaded:,} points"
            if p["counts"]:
                counts = p["counts"]
                label += (f" (count {counts[0]:,})" if len(counts) == 1
                          else f" (count {counts[0]:,} to {counts[-1]:,})")
            if p["error"]:
                value = f"error after {p['requests']} requests: {p['error']}"
            else:
                value = (f"median {p['median_ms']:.1f} ms, p99 {p['p99_ms']:.1f} ms "
                         f"({p['requests']} requests, all 200 MISS)")
            if last_stage or p["error"]:
                target = ("median ≤ 20 ms, p99 ≤ 50 ms" + ("" if loaded >= 10_000_000 else " (set for 10 M)")
                          if last_stage else "")
                ok = not p["error"] and (not last_stage or (p["median_ms"] <= 20.0 and p["p99_ms"] <= 50.0))
                check(label, value, target, ok)
            else:
                info(label, value)

    def deltas_text(u: dict) -> str:
        def n(v: int | None) -> str:
            return "?" if v is None else f"{v:,}"
        return (f"rows in metric_rollup_deltas {n(u.get('deltas_at_start'))} at the start, "
                f"{n(u.get('deltas_at_end'))} at the end")

    def user_after_load(u: dict, last_stage: bool) -> None:
        loaded = u["points_loaded"]
        user_rows(u, last_stage)
        first = u.get("first_request_after_load_s")
        if first is None:
            check(f"user's way {u['label']} at {loaded:,} points: start", "no request was sent",
                  "first request ≤ 10 s after the load", False)
        else:
            check(f"user's way {u['label']} at {loaded:,} points: start",
                  f"first request {first:.2f} s, last {u['last_request_after_load_s']:.2f} s after "
                  f"the load ended; {deltas_text(u)}",
                  "first request ≤ 10 s after the load", first <= 10.0)
        counts = u["periods"]["all"]["counts"]
        check(f"summary all, user's way {u['label']}: count exact at {loaded:,} points",
              ", ".join(f"{c:,}" for c in counts) or "no answer", "= loaded rows", counts == [loaded])

    def writer_rows(u: dict) -> None:
        peak, held = load("writer-max.json"), load("writer.json")

        def statuses(run: dict) -> tuple[str, int]:
            codes = run.get("statusCodeDistribution", {})
            # Requests still in flight when oha is stopped are "aborted due to deadline".
            errors = {e: k for e, k in run.get("errorDistribution", {}).items() if "deadline" not in e}
            text = ", ".join(f"{k:,} × {c}" for c, k in sorted(codes.items())) or "no responses"
            if errors:
                text += "; errors: " + ", ".join(f"{k:,} × {e}" for e, k in errors.items())
            bad = sum(k for c, k in codes.items() if c != "201") + sum(errors.values())
            return text, bad

        peak_text, peak_bad = statuses(peak)
        held_text, held_bad = statuses(held)
        rate = int(facts["writer_rate"])
        achieved = held["summary"]["requestsPerSec"]
        check(f"concurrent writer (POST /api/metrics, type {facts['writer_type']}, tag host=bench-writer)",
              f"maximum {peak['summary']['requestsPerSec']:,.0f} writes/s ({facts['writer_max_load']}; {peak_text}); "
              f"held at half, {rate:,}/s: achieved {achieved:,.0f}/s over {held['summary']['total']:.1f} s "
              f"(the summaries took {u['seconds']:.1f} s), {held_text}; rows of the type added by both runs "
              f"{int(facts['writer_rows']):,}; {deltas_text(u)}",
              "every response 201", peak_bad == 0 and held_bad == 0)
        user_rows(u, True)
        info(f"user's way {u['label']}: counts", "the writes go to the measured type, so the count "
             "grows during the measurement: no exact-count check for these rows")

    users = {name: load(f"{name}.json") for name in ("user-load-a", "user-load-b", "user-writer-b")
             if (work / f"{name}.json").exists()}

    for stage, summary, ex in zip(("a", "b"), summaries, exact):
        loaded = summary["points_loaded"]
        last_stage = stage == "b"
        if f"user-load-{stage}" in users:
            user_after_load(users[f"user-load-{stage}"], last_stage)
        if f"user-writer-{stage}" in users:
            writer_rows(users[f"user-writer-{stage}"])
        for period in PERIODS:
            p = summary["periods"][period]
            label = f"uncached summary {period}, current way, at {loaded:,} points"
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
        extra = summary.get("extra_rows", 0)
        check(f"summary all: count exact at {loaded:,} points"
              + (f" + {extra:,} from the concurrent writer" if extra else ""),
              f"{got['count']:,} (stored {ex['count']:,})", "= stored rows",
              got["count"] == ex["count"] == loaded + extra)
        errors = []
        for key, want in zip(("p50", "p95", "p99"), ex["percentiles"]):
            errors.append((key, abs(got[key] - want) / abs(want) if want else 0.0))
        worst = max(e for _, e in errors)
        check(f"summary all: p50/p95/p99 vs percentile_cont at {loaded:,} points",
              ", ".join(f"{k} {e * 100:.3f}%" for k, e in errors), "≤ 1% relative error",
              worst <= 0.01)

    if (work / "rw-load.json").exists():
        remote_write_rows(work, facts, info, check)

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
    write_report(lines, args.out, bool(failed) and args.strict)


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


# --- memory -----------------------------------------------------------------------------------
#
# `memory` runs one scenario of `run.sh --memory` against one freshly started server process
# (its pid is given): rounds of CONCURRENCY identical requests released at once by a barrier,
# each on its own connection, while a watchdog reads the server's /proc/<pid>/status every
# 10 ms and, optionally, a small client sends single writes at a fixed rate on connections of
# its own. The watchdog kills the server (SIGKILL) if its RSS passes --guard-mb, so a server
# without bounds cannot take the shared machine's memory; the result then says so.
# `memory-report` turns the scenarios' JSON files into the table.

MAX_BATCH_BYTES = 16 * 1024 * 1024
MAX_SINGLE_BYTES = 1024 * 1024
MAX_TAGS, MAX_TAG_KEY_CHARS, MAX_TAG_VALUE_CHARS = 32, 100, 500

MEMORY_SCENARIOS = {  # labels, given the requests per round
    "maximal": "{n} concurrent maximal batches (10,000 points × 32 tags)",
    "ordinary": "{n} concurrent ordinary batches (10,000 points, gzip)",
    "batch-bomb": "{n} concurrent gzip bombs of [1,1,…]",
    "single-bomb": "{n} concurrent gzip bombs of {{\"value\":\"xxx…\"}}",
}


def _stamp(t: float) -> str:
    """A fixed-width RFC 3339 UTC timestamp with milliseconds."""
    second = int(t)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)) + f".{int((t - second) * 1000):03d}Z"


def maximal_batch_body(size: int) -> bytes:
    """10,000 points of 32 tags each, exactly `size` bytes of JSON (`size` just under 16 MiB):
    every field within the rules (keys 8 characters, values 35–58 of the allowed 500)."""
    now = time.time()
    keys = [f"label_{k:02d}" for k in range(MAX_TAGS)]

    def point(i: int, extra: int, fill: int) -> str:
        # Fixed width: timestamp, a value of 6 characters, each tag value 10 + fill characters.
        values = [f"p{i:05d}-t{k:02d}" + "v" * fill for k in range(MAX_TAGS)]
        values[-1] += "w" * extra
        tags = ",".join(f'"{key}":"{value}"' for key, value in zip(keys, values))
        return (f'{{"timestamp":"{_stamp(now - i)}","value":{10 + i % 90}.125,'
                f'"type":"bench_memory","tags":{{{tags}}}}}')

    frame = len('{"metrics":[]}') + (BATCH_POINTS - 1)  # the brackets and the commas
    bare = len(point(0, 0, 0))
    fill, rest = divmod(size - frame - BATCH_POINTS * bare, BATCH_POINTS * MAX_TAGS)
    extra, more = divmod(rest, BATCH_POINTS)
    items = [point(i, extra + (1 if i < more else 0), fill) for i in range(BATCH_POINTS)]
    body = ('{"metrics":[' + ",".join(items) + "]}").encode()
    if len(body) != size or size > MAX_BATCH_BYTES:
        die(f"maximal batch body is {len(body)} bytes, wanted {size} (limit {MAX_BATCH_BYTES})")
    longest = 10 + fill + extra + 1
    if fill < 0 or longest > MAX_TAG_VALUE_CHARS or max(map(len, keys)) > MAX_TAG_KEY_CHARS:
        die(f"maximal batch: tag values of {longest} characters break the rules")
    return body


def ordinary_batch_body() -> bytes:
    """10,000 points of one type with one tag (~1 MB of JSON), like the full run's batches."""
    now = time.time()
    items = [f'{{"timestamp":"{_stamp(now - i)}","value":{10 + i % 90}.125,'
             f'"type":"bench_memory_ordinary","tags":{{"host":"bench-1"}}}}'
             for i in range(BATCH_POINTS)]
    return ('{"metrics":[' + ",".join(items) + "]}").encode()


def batch_bomb_body(size: int) -> bytes:
    """`{"metrics":[1,1,1,...]}` of exactly `size` bytes (odd, so the ones and commas fit)."""
    size -= (size - len('{"metrics":[1]}')) % 2
    ones = (size - len('{"metrics":[1]}')) // 2
    return b'{"metrics":[' + b"1," * ones + b"1]}"


def single_bomb_body(size: int) -> bytes:
    """`{"value":"xxx..."}` of exactly `size` bytes: far past the single write's 1 MiB."""
    return b'{"value":"' + b"x" * (size - len('{"value":""}')) + b'"}'


def read_status_kb(pid: int) -> dict[str, int] | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(rest.split()[0])
    return found if len(found) == 2 else None


def _outcome(error: BaseException) -> str:
    return f"error: {type(error).__name__}"


def _post(host: str, port: int, path: str, body: bytes, headers: dict, timeout: float,
          barrier: threading.Barrier | None = None) -> tuple[str, float]:
    """One request on its own connection: ("STATUS" or "STATUS CODE" for an error body with a
    code, or "error: ..." without a response; seconds from sending)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    began = time.perf_counter()
    try:
        if barrier is not None:
            conn.connect()
            barrier.wait(timeout=timeout)
            began = time.perf_counter()
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        payload = response.read()
        elapsed = time.perf_counter() - began
        outcome = str(response.status)
        if response.status >= 400:
            try:
                code = json.loads(payload).get("code")
            except (ValueError, AttributeError):
                code = None
            if isinstance(code, str) and re.fullmatch(r"[A-Z_]{1,40}", code):
                outcome += f" {code}"
        return outcome, elapsed
    except (OSError, http.client.HTTPException, threading.BrokenBarrierError) as error:
        return _outcome(error), time.perf_counter() - began
    finally:
        conn.close()


def _count(outcomes: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome] = counts.get(outcome, 0) + 1
    return dict(sorted(counts.items()))


def cmd_memory(args: argparse.Namespace) -> None:
    if args.host != "127.0.0.1":
        die("the memory scenarios target 127.0.0.1 only")
    # Bodies first, before the idle reading and any timing.
    json_headers = {"Content-Type": "application/json"}
    gzip_headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    if args.scenario == "maximal":
        inflated = maximal_batch_body(MAX_BATCH_BYTES - 1024)
        path, body, headers, expect = "/api/metrics/batch", inflated, json_headers, "201"
    elif args.scenario == "ordinary":
        inflated = ordinary_batch_body()
        body = gzip.compress(inflated, compresslevel=6, mtime=0)
        path, headers, expect = "/api/metrics/batch", gzip_headers, "201"
    elif args.scenario == "batch-bomb":
        inflated = batch_bomb_body(MAX_BATCH_BYTES - 1024)
        body = gzip.compress(inflated, compresslevel=9, mtime=0)
        path, headers, expect = "/api/metrics/batch", gzip_headers, "413"
    else:
        inflated = single_bomb_body(MAX_BATCH_BYTES - 1024)
        body = gzip.compress(inflated, compresslevel=9, mtime=0)
        path, headers, expect = "/api/metrics", gzip_headers, "413"
    inflated_bytes = len(inflated)
    del inflated

    load_before = os.getloadavg()[0]
    idle = read_status_kb(args.pid)
    if idle is None:
        die(f"server process {args.pid} is gone before the scenario")

    # Watchdog: peak RSS as seen every 10 ms, and the guard.
    stop = threading.Event()
    watch = {"max_rss_kb": idle["VmRSS"], "hwm_kb": idle["VmHWM"], "guard_tripped": False,
             "gone": False}

    def watchdog() -> None:
        guard_kb = args.guard_mb * 1024
        deadline = time.monotonic() + args.max_seconds + args.timeout + 60
        while not stop.is_set() and time.monotonic() < deadline:
            status = read_status_kb(args.pid)
            if status is None:
                watch["gone"] = True
                return
            watch["max_rss_kb"] = max(watch["max_rss_kb"], status["VmRSS"])
            watch["hwm_kb"] = max(watch["hwm_kb"], status["VmHWM"])
            if status["VmRSS"] > guard_kb:
                watch["guard_tripped"] = True
                os.kill(args.pid, 9)
                print(f"memory {args.scenario}: RSS {status['VmRSS'] / 1024:.0f} MB passed the "
                      f"guard ({args.guard_mb} MB): server killed", file=sys.stderr)
                return
            time.sleep(0.01)

    # The small client: single writes at a fixed rate, each on its own connection and thread,
    # so a slow answer delays no other (open loop); it stops when the load stops.
    load_done = threading.Event()
    probe_outcomes: list[tuple[str, float]] = []
    probe_lock = threading.Lock()
    probe_sent = [0]

    def probe_one(n: int) -> None:
        point = json.dumps({"timestamp": _stamp(time.time()), "value": 1.5 + n,
                            "type": "bench_memory_probe", "tags": {"client": "small"}}).encode()
        result = _post(args.host, args.port, "/api/metrics", point, json_headers, args.timeout)
        with probe_lock:
            probe_outcomes.append(result)

    def probe() -> None:
        threads = []
        began = time.monotonic()
        for n in range(args.probe_requests):
            due = began + n / args.probe_rate
            while not load_done.is_set() and time.monotonic() < due:
                time.sleep(min(0.005, max(0.0, due - time.monotonic())))
            if load_done.is_set():
                break
            thread = threading.Thread(target=probe_one, args=(n,), daemon=True)
            thread.start()
            threads.append(thread)
            probe_sent[0] = n + 1
        for thread in threads:
            thread.join(timeout=args.timeout + 5)

    watcher = threading.Thread(target=watchdog, daemon=True)
    watcher.start()
    prober = None
    if args.probe_requests > 0:
        prober = threading.Thread(target=probe, daemon=True)
        prober.start()

    outcomes: list[str] = []
    latencies: list[float] = []
    rounds: list[dict] = []
    began = time.monotonic()
    # At least --rounds rounds; more while the small client is still sending (so its every
    # request meets the load), up to --max-rounds and --max-seconds.
    while len(rounds) < args.max_rounds:
        probing = prober is not None and probe_sent[0] < args.probe_requests
        if len(rounds) >= args.rounds and not probing:
            break
        if time.monotonic() - began > args.max_seconds or watch["guard_tripped"] or watch["gone"]:
            break
        results: list[tuple[str, float]] = [("error: not sent", 0.0)] * args.concurrency
        released = [0.0]
        barrier = threading.Barrier(args.concurrency,
                                    action=lambda: released.__setitem__(0, time.perf_counter()))

        def send(k: int) -> None:
            results[k] = _post(args.host, args.port, path, body, headers, args.timeout, barrier)

        threads = [threading.Thread(target=send, args=(k,), daemon=True)
                   for k in range(args.concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=args.timeout * 2 + 10)
        ended = time.perf_counter()
        wall = ended - released[0] if released[0] else float("nan")
        statuses = [s for s, _ in results]
        outcomes += statuses
        latencies += [t for _, t in results]
        rounds.append({"seconds": wall, "statuses": _count(statuses)})
        print(f"memory {args.scenario}: round {len(rounds)}: {args.concurrency} requests in "
              f"{wall:.2f} s, {_count(statuses)}, peak RSS so far {watch['hwm_kb'] / 1024:.1f} MB",
              file=sys.stderr)
    load_done.set()
    load_seconds = time.monotonic() - began
    if prober is not None:
        prober.join(timeout=args.timeout + 10)
    # Let the watchdog take a last look, then read the high-water mark itself.
    time.sleep(0.1)
    stop.set()
    watcher.join(timeout=5)
    final = read_status_kb(args.pid)
    if final is not None:
        watch["hwm_kb"] = max(watch["hwm_kb"], final["VmHWM"])
        watch["max_rss_kb"] = max(watch["max_rss_kb"], final["VmRSS"])

    result = {
        "scenario": args.scenario,
        "label": MEMORY_SCENARIOS[args.scenario].format(n=args.concurrency),
        "path": path,
        "gzip": "Content-Encoding" in headers,
        "body_bytes": len(body),
        "inflated_bytes": inflated_bytes,
        "concurrency": args.concurrency,
        "rounds": rounds,
        "requests": len(outcomes),
        "statuses": _count(outcomes),
        "expected_status": expect,
        "load_seconds": load_seconds,
        "request_seconds_max": max(latencies) if latencies else None,
        "idle_rss_kb": idle["VmRSS"],
        "idle_hwm_kb": idle["VmHWM"],
        "peak_hwm_kb": watch["hwm_kb"],
        "max_rss_seen_kb": watch["max_rss_kb"],
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg()[0],
        "guard_mb": args.guard_mb,
        "guard_tripped": watch["guard_tripped"],
        "server_gone": final is None,
    }
    if prober is not None:
        times = sorted(t * 1000 for s, t in probe_outcomes)
        result["probe"] = {
            "rate": args.probe_rate,
            "requests": len(probe_outcomes),
            "statuses": _count([s for s, _ in probe_outcomes]),
            **({"p50_ms": statistics.median(times), "p99_ms": nearest_rank(times, 0.99),
                "max_ms": times[-1]} if times else {}),
        }
    Path(args.result).write_text(json.dumps(result, indent=1))
    summary = (f"memory {args.scenario}: {len(outcomes)} requests {result['statuses']}, "
               f"idle RSS {idle['VmRSS'] / 1024:.1f} MB, peak RSS (VmHWM) {watch['hwm_kb'] / 1024:.1f} MB")
    if "probe" in result:
        p = result["probe"]
        summary += (f"; small client {p['requests']} writes {p['statuses']}"
                    + (f", p50 {p['p50_ms']:.1f} ms, p99 {p['p99_ms']:.1f} ms" if "p99_ms" in p else ""))
    print(summary)


def _statuses_text(statuses: dict[str, int]) -> str:
    return ", ".join(f"{n} × {s}" for s, n in statuses.items()) or "none"


def cmd_memory_report(args: argparse.Namespace) -> None:
    work = Path(args.work)
    facts = read_facts(work / "facts.tsv")
    target_mb = 100.0
    rows = []
    failed = []
    loads = []
    for scenario in MEMORY_SCENARIOS:
        path = work / f"memory-{scenario}.json"
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        peak_mb = r["peak_hwm_kb"] / 1024
        expected = r["expected_status"]
        clean = all(s.split()[0] == expected for s in r["statuses"]) and not r["guard_tripped"]
        ok = peak_mb < target_mb and clean
        if not ok:
            failed.append(r["label"])
        peak = f"{peak_mb:.1f}"
        if r["guard_tripped"]:
            peak = f"> {r['guard_mb']} (killed by the guard at {r['max_rss_seen_kb'] / 1024:.0f} MB RSS)"
        elif r["server_gone"]:
            peak = f"≥ {peak_mb:.1f} (server exited)"
        body = (f"{r['body_bytes']:,} B gzip → {r['inflated_bytes']:,} B" if r["gzip"]
                else f"{r['body_bytes']:,} B")
        walls = [x["seconds"] for x in r["rounds"]]
        wall = (f"{statistics.median(walls):.2f} s median, {max(walls):.2f} s max" if walls else "—")
        n_rounds = len(r["rounds"])
        scenario_text = (f"{r['label']} (`{r['path']}`, {body}; "
                         f"{n_rounds} round{'s' if n_rounds != 1 else ''} of {r['concurrency']})")
        statuses = _statuses_text(r["statuses"]) + ("" if clean else f" (expected all {expected})")
        probe = "—"
        if "probe" in r:
            p = r["probe"]
            probe = (f"p99 {p['p99_ms']:.0f} ms (p50 {p['p50_ms']:.0f} ms; {_statuses_text(p['statuses'])})"
                     if "p99_ms" in p else f"no requests ({_statuses_text(p['statuses'])})")
        mark = "✓" if peak_mb < target_mb and not r["guard_tripped"] else "✗"
        rows.append((scenario_text, f"{r['requests']:,}", statuses, wall,
                     f"{r['idle_rss_kb'] / 1024:.1f}", peak, mark, probe))
        loads.append(f"{r['label'].split(' (')[0]}: {r['loadavg_before']:.1f} → {r['loadavg_after']:.1f}")
    if not rows:
        die("no memory scenario results found")

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [
        f"#### Memory, {facts['started']} UTC",
        "",
        f"Machine: {facts['nproc']} CPUs ({facts['cpu']}), {facts['memory']} RAM, kernel {facts['kernel']}; "
        f"PostgreSQL {facts['pg_version']}, Redis {facts['redis_version']}; Python {facts['python_version']}; "
        f"server {facts['binary']}, {facts['source']}; took {facts.get('elapsed', '?')}.",
        f"Each scenario against a freshly started server process; peak RSS is its VmHWM "
        f"(start-up included), idle RSS its VmRSS just before the scenario. "
        f"{facts.get('memory_settings', '')}",
        "",
        "| scenario | requests | statuses | wall time per round | idle RSS MB | peak RSS MB | < 100 MB | small client (single writes) |",
        "|---|---|---|---|---|---|---|---|",
        *("| " + " | ".join(cell(c) for c in row) + " |" for row in rows),
        "",
        f"Machine load (1-minute load average before → after each scenario, {facts['nproc']} CPUs): "
        + "; ".join(loads) + ".",
        "",
        f"Logs (RUST_LOG=warn): {facts.get('log_lines', '?')}",
        "",
        f"Overall: {'all scenarios under 100 MB with the expected statuses' if not failed else 'FAILED: ' + '; '.join(failed)}.",
    ]
    write_report(lines, args.out, bool(failed) and args.strict)


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
    p.add_argument("--data")
    p.add_argument("--stage", choices=("a", "b"))
    p.add_argument("--csv", help="instead of --data and --stage: this CSV file")
    p.add_argument("--expect-rows", type=int, help="with --csv: the rows it holds")
    p.add_argument("--table", default="metrics_copy")
    p.add_argument("--columns", default="metric_type, value, recorded_at")
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
    p.add_argument("--extra-rows", type=int, default=0,
                   help="rows of the type written since the load (the concurrent writer's)")
    p.add_argument("--result", required=True)
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("summary-user")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True, help="the main server (with Redis)")
    p.add_argument("--redis-port", type=int, required=True, help="Redis on 127.0.0.1, for FLUSHALL")
    p.add_argument("--type", default="bench_latency")
    p.add_argument("--requests", type=int, default=30)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--expect-count", type=int, required=True)
    p.add_argument("--load-ended", type=float, help="unix time the batch load ended")
    p.add_argument("--count-deltas", action="store_true",
                   help="count metric_rollup_deltas (psql) at the start and the end")
    p.add_argument("--label", required=True)
    p.add_argument("--result", required=True)
    p.set_defaults(func=cmd_summary_user)

    p = sub.add_parser("wrk")
    p.add_argument("--file", required=True)
    p.add_argument("--result", required=True)
    p.set_defaults(func=cmd_wrk)

    p = sub.add_parser("report")
    p.add_argument("--work", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--strict", action="store_true")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("remote-write-report")
    p.add_argument("--work", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--strict", action="store_true")
    p.set_defaults(func=cmd_remote_write_report)

    p = sub.add_parser("soak-report")
    p.add_argument("--work", required=True)
    p.add_argument("--minutes", type=int, required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_soak_report)

    p = sub.add_parser("memory")
    p.add_argument("--scenario", choices=tuple(MEMORY_SCENARIOS), required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pid", type=int, required=True, help="the server process to watch")
    p.add_argument("--concurrency", type=int, required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-rounds", type=int, default=30)
    p.add_argument("--max-seconds", type=float, default=180.0)
    p.add_argument("--probe-requests", type=int, default=0)
    p.add_argument("--probe-rate", type=float, default=20.0)
    p.add_argument("--guard-mb", type=int, default=3072)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--result", required=True)
    p.set_defaults(func=cmd_memory)

    p = sub.add_parser("memory-report")
    p.add_argument("--work", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--strict", action="store_true")
    p.set_defaults(func=cmd_memory_report)

    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
