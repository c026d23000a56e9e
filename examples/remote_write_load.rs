//! Load generator for `POST /api/v1/write` (Prometheus remote write 1.0), used by
//! `bench/run.sh --remote-write`.
//!
//! `--series` distinct series (default 10,000: 40 metric names × 250 targets, each with
//! `job`, `instance`, `region`, `env` and `team` labels) are sent in rounds: a round gives
//! every series `--samples-per-series` new samples (default 5, scraped `--interval-ms` apart)
//! in requests of `--series-per-request` series each (default 2,000, so 10,000 samples a
//! request and 5 requests a round). Timestamps never repeat across rounds, so nothing is
//! deduplicated, and end at the time of generation. The series are shuffled over a round's
//! requests (a fixed permutation), as a sender's shards mix them.
//!
//! Every body is encoded and snappy-compressed before any timing. First `--warmup-rounds`
//! (they create the series), then `--rounds` measured rounds, each phase with `--concurrency`
//! requests in flight on keep-alive connections. Bounded in count (the rounds) and in time
//! (`--max-seconds` for both phases: no request starts after it; each request has a
//! `--timeout-seconds`). With `--cpu-pid` and `--cpu-file`, each phase also records the CPU
//! time the server process and PostgreSQL's cgroup used during it (and the load average), a
//! figure less disturbed by other work on a shared machine than the wall time. Prints one
//! line per phase and writes the figures as JSON to `--result`; exits 1 when any response is
//! not a 204 (or a request failed), 2 on bad arguments.
//!
//! ```sh
//! cargo run --release --example remote_write_load -- \
//!     --url http://127.0.0.1:8080/api/v1/write --rounds 20 --result /tmp/rw.json
//! ```

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::body::Bytes;
use clap::Parser;
use prost::Message;
use resilient_analytics::receivers::remote_write::{Label, PromSample, TimeSeries, WriteRequest};
use serde_json::json;

#[derive(Parser, Debug)]
#[command(about = "Remote-write load generator (see the file's documentation)")]
struct Args {
    /// The endpoint, e.g. http://127.0.0.1:8080/api/v1/write
    #[arg(long)]
    url: String,
    /// An API key, sent as `Authorization: Bearer <key>` (AUTH_MODE=required); none when empty.
    #[arg(long, default_value = "")]
    key: String,
    /// Distinct series.
    #[arg(long, default_value_t = 10_000)]
    series: usize,
    /// Samples of each series in each request.
    #[arg(long, default_value_t = 5)]
    samples_per_series: usize,
    /// Series in each request.
    #[arg(long, default_value_t = 2_000)]
    series_per_request: usize,
    /// Measured rounds (each: every series once).
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Rounds before the measured ones, reported apart (the first creates the series).
    #[arg(long, default_value_t = 1)]
    warmup_rounds: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Milliseconds between a series' samples (the scrape interval).
    #[arg(long, default_value_t = 15_000)]
    interval_ms: i64,
    /// No request starts after this many seconds (warm-up and measured rounds together).
    #[arg(long, default_value_t = 600)]
    max_seconds: u64,
    /// Per-request timeout.
    #[arg(long, default_value_t = 60)]
    timeout_seconds: u64,
    /// Where to write the figures (JSON).
    #[arg(long)]
    result: Option<PathBuf>,
    /// A process (the server) whose CPU time (utime + stime, clock ticks) is read at the start
    /// and the end of each phase.
    #[arg(long)]
    cpu_pid: Option<u32>,
    /// A cgroup's CPU counter read likewise (PostgreSQL's container): cgroup v1
    /// `cpuacct.usage` (nanoseconds) or v2 `cpu.stat` (its `usage_usec`).
    #[arg(long)]
    cpu_file: Option<PathBuf>,
}

/// CPU counters and the 1-minute load average at one moment; `None` where unreadable.
#[derive(Clone, Copy)]
struct Counters {
    pid_ticks: Option<u64>,
    cgroup_ns: Option<u64>,
    loadavg: Option<f64>,
}

impl Counters {
    fn read(args: &Args) -> Self {
        let pid_ticks = args.cpu_pid.and_then(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // After the command name (in parentheses, which may hold spaces): state is field
            // 3, utime 14 and stime 15.
            let rest = &stat[stat.rfind(')')? + 1..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        });
        let cgroup_ns = args.cpu_file.as_ref().and_then(|path| {
            let text = std::fs::read_to_string(path).ok()?;
            match text
                .lines()
                .find_map(|line| line.strip_prefix("usage_usec "))
            {
                Some(usec) => Some(usec.trim().parse::<u64>().ok()? * 1000),
                None => text.trim().parse().ok(),
            }
        });
        let loadavg = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|text| text.split_whitespace().next()?.parse().ok());
        Self {
            pid_ticks,
            cgroup_ns,
            loadavg,
        }
    }

    fn since(self, before: Self) -> serde_json::Value {
        json!({
            "server_ticks": self.pid_ticks.zip(before.pid_ticks).map(|(a, b)| a.saturating_sub(b)),
            "postgres_ns": self.cgroup_ns.zip(before.cgroup_ns).map(|(a, b)| a.saturating_sub(b)),
            "loadavg_before": before.loadavg,
            "loadavg_after": self.loadavg,
        })
    }
}

const NAMES: [&str; 40] = [
    "node_cpu_seconds_total",
    "node_memory_MemAvailable_bytes",
    "node_memory_MemFree_bytes",
    "node_memory_Cached_bytes",
    "node_memory_Buffers_bytes",
    "node_load1",
    "node_load5",
    "node_load15",
    "node_filesystem_avail_bytes",
    "node_filesystem_size_bytes",
    "node_disk_read_bytes_total",
    "node_disk_written_bytes_total",
    "node_disk_io_time_seconds_total",
    "node_network_receive_bytes_total",
    "node_network_transmit_bytes_total",
    "node_network_receive_packets_total",
    "node_network_transmit_packets_total",
    "node_context_switches_total",
    "node_intr_total",
    "node_forks_total",
    "node_procs_running",
    "node_procs_blocked",
    "node_boot_time_seconds",
    "node_time_seconds",
    "node_entropy_available_bits",
    "node_filefd_allocated",
    "node_sockstat_TCP_inuse",
    "node_vmstat_pgfault",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_open_fds",
    "go_goroutines",
    "go_gc_duration_seconds_sum",
    "go_memstats_alloc_bytes",
    "http_requests_total",
    "http_request_duration_seconds_sum",
    "http_request_duration_seconds_count",
    "http_response_size_bytes_sum",
    "up",
    "scrape_duration_seconds",
];
const JOBS: [&str; 5] = ["node", "api", "worker", "gateway", "db-exporter"];
const REGIONS: [&str; 4] = ["eu-west-1", "eu-central-1", "us-east-1", "ap-south-1"];
const ENVS: [&str; 2] = ["production", "staging"];
const TEAMS: [&str; 6] = [
    "platform", "payments", "search", "identity", "data", "mobile",
];

/// splitmix64: a fixed, dependency-free sequence for the shuffle and the values.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d4_9bb1_3311_11eb);
    x ^ (x >> 31)
}

/// Series `s`: metric name `s % 40` of target `s / 40`. The labels in Prometheus' order
/// (sorted by name).
fn labels(s: usize) -> Vec<Label> {
    let (name, target) = (NAMES[s % NAMES.len()], s / NAMES.len());
    let label = |name: &str, value: String| Label {
        name: name.to_owned(),
        value,
    };
    let mut labels = vec![
        label("__name__", name.to_owned()),
        label("env", ENVS[target % ENVS.len()].to_owned()),
        label(
            "instance",
            format!(
                "10.{}.{}.{}:9100",
                target / 65_536 % 256,
                target / 256 % 256,
                target % 256
            ),
        ),
        label("job", JOBS[target % JOBS.len()].to_owned()),
        label(
            "region",
            REGIONS[target / JOBS.len() % REGIONS.len()].to_owned(),
        ),
        label("team", TEAMS[target / 7 % TEAMS.len()].to_owned()),
    ];
    labels.sort_by(|a, b| a.name.cmp(&b.name));
    labels
}

/// A plausible value of series `s` at its `j`-th sample: counters grow, gauges wander.
fn value(s: usize, j: usize) -> f64 {
    let noise = (mix((s as u64) << 32 | j as u64) >> 11) as f64 / (1u64 << 53) as f64;
    if NAMES[s % NAMES.len()].ends_with("_total") || NAMES[s % NAMES.len()].ends_with("_sum") {
        (j as f64 * 15.0 + noise * 15.0 * (1 + s % 97) as f64).round()
    } else {
        ((s % 1000) as f64 * 10.0 + noise * 100.0).round() / 10.0
    }
}

struct Body {
    bytes: Bytes,
    inflated: usize,
    samples: usize,
}

/// The bodies of every round, in order: round `r`'s requests are bodies
/// `r * per_round .. (r + 1) * per_round`.
fn bodies(args: &Args, start_ms: i64) -> Vec<Body> {
    let rounds = args.warmup_rounds + args.rounds;
    let mut order: Vec<usize> = (0..args.series).collect();
    // Fisher–Yates with a fixed seed.
    for i in (1..order.len()).rev() {
        let j = (mix(i as u64) % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    let all_labels: Vec<Vec<Label>> = (0..args.series).map(labels).collect();
    // Each target is scraped at its own offset within the interval, as Prometheus spreads them.
    let offset =
        |s: usize| (mix(1_000_003 + (s / NAMES.len()) as u64) % args.interval_ms as u64) as i64;
    let mut encoder = snap::raw::Encoder::new();
    let mut out = Vec::new();
    for round in 0..rounds {
        for chunk in order.chunks(args.series_per_request) {
            let timeseries: Vec<TimeSeries> = chunk
                .iter()
                .map(|&s| TimeSeries {
                    labels: all_labels[s].clone(),
                    samples: (0..args.samples_per_series)
                        .map(|k| {
                            let j = round * args.samples_per_series + k;
                            PromSample {
                                value: value(s, j),
                                timestamp: start_ms + j as i64 * args.interval_ms + offset(s),
                            }
                        })
                        .collect(),
                })
                .collect();
            let samples = timeseries.iter().map(|t| t.samples.len()).sum();
            let message = WriteRequest { timeseries }.encode_to_vec();
            let compressed = encoder
                .compress_vec(&message)
                .expect("snappy compresses any buffer");
            out.push(Body {
                bytes: Bytes::from(compressed),
                inflated: message.len(),
                samples,
            });
        }
    }
    out
}

/// One request's outcome: "204", another status, or "error: <kind>"; seconds; samples.
type Outcome = (String, f64, usize);

/// Sends `bodies` with `concurrency` in flight; none starts after `deadline`.
async fn run_phase(
    client: &reqwest::Client,
    args: &Args,
    bodies: Arc<Vec<Bytes>>,
    samples: Arc<Vec<usize>>,
    deadline: Instant,
) -> (Vec<Outcome>, f64, Vec<String>, serde_json::Value) {
    let next = Arc::new(AtomicUsize::new(0));
    let counters = Counters::read(args);
    let began = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (client, bodies, samples, next) = (
            client.clone(),
            bodies.clone(),
            samples.clone(),
            next.clone(),
        );
        let (url, key) = (args.url.clone(), args.key.clone());
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            let mut problems = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= bodies.len() || Instant::now() >= deadline {
                    break;
                }
                let mut request = client
                    .post(&url)
                    .header("Content-Encoding", "snappy")
                    .header("Content-Type", "application/x-protobuf")
                    .header("User-Agent", "remote_write_load")
                    .header("X-Prometheus-Remote-Write-Version", "0.1.0")
                    .body(bodies[i].clone());
                if !key.is_empty() {
                    request = request.bearer_auth(&key);
                }
                let sent = Instant::now();
                let outcome = match request.send().await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let text = response.text().await.unwrap_or_default();
                        if status != 204 && problems.len() < 3 {
                            problems.push(format!(
                                "request {i}: {status}: {}",
                                text.chars().take(300).collect::<String>()
                            ));
                        }
                        status.to_string()
                    }
                    Err(error) => {
                        if problems.len() < 3 {
                            problems.push(format!("request {i}: {error}"));
                        }
                        let kind = if error.is_timeout() {
                            "timeout"
                        } else if error.is_connect() {
                            "connect"
                        } else {
                            "other"
                        };
                        format!("error: {kind}")
                    }
                };
                outcomes.push((outcome, sent.elapsed().as_secs_f64(), samples[i]));
            }
            (outcomes, problems)
        }));
    }
    let mut outcomes = Vec::new();
    let mut problems = Vec::new();
    for task in tasks {
        let (o, p) = task.await.expect("a sender task panicked");
        outcomes.extend(o);
        problems.extend(p);
    }
    let seconds = began.elapsed().as_secs_f64();
    let cpu = Counters::read(args).since(counters);
    (outcomes, seconds, problems, cpu)
}

fn nearest_rank(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

fn phase_json(
    outcomes: &[Outcome],
    seconds: f64,
    planned: usize,
    cpu: serde_json::Value,
) -> serde_json::Value {
    let mut statuses = BTreeMap::<&str, usize>::new();
    for (status, _, _) in outcomes {
        *statuses.entry(status.as_str()).or_default() += 1;
    }
    let stored: usize = outcomes
        .iter()
        .filter(|(status, _, _)| status == "204")
        .map(|(_, _, samples)| samples)
        .sum();
    let mut latencies: Vec<f64> = outcomes.iter().map(|(_, t, _)| t * 1000.0).collect();
    latencies.sort_by(f64::total_cmp);
    let latency = if latencies.is_empty() {
        json!(null)
    } else {
        json!({
            "p50": nearest_rank(&latencies, 0.50),
            "p90": nearest_rank(&latencies, 0.90),
            "p99": nearest_rank(&latencies, 0.99),
            "max": latencies[latencies.len() - 1],
        })
    };
    json!({
        "requests_planned": planned,
        "requests": outcomes.len(),
        "statuses": statuses,
        "samples_accepted": stored,
        "seconds": seconds,
        "samples_per_second": if seconds > 0.0 { stored as f64 / seconds } else { 0.0 },
        "latency_ms": latency,
        "cpu": cpu,
    })
}

fn print_phase(name: &str, phase: &serde_json::Value) {
    let latency = &phase["latency_ms"];
    println!(
        "remote write {name}: {} of {} requests, statuses {}, {} samples in {:.2} s = {:.0} samples/s; \
         latency p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        phase["requests"],
        phase["requests_planned"],
        phase["statuses"],
        phase["samples_accepted"],
        phase["seconds"].as_f64().unwrap_or(0.0),
        phase["samples_per_second"].as_f64().unwrap_or(0.0),
        latency["p50"].as_f64().unwrap_or(f64::NAN),
        latency["p90"].as_f64().unwrap_or(f64::NAN),
        latency["p99"].as_f64().unwrap_or(f64::NAN),
        latency["max"].as_f64().unwrap_or(f64::NAN),
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    if args.series == 0
        || args.samples_per_series == 0
        || args.series_per_request == 0
        || args.concurrency == 0
        || args.rounds == 0
        || args.interval_ms <= 0
    {
        eprintln!(
            "remote_write_load: series, samples, series per request, concurrency, rounds and interval must be positive"
        );
        std::process::exit(2);
    }
    let per_round = args.series.div_ceil(args.series_per_request);
    let total_samples = (args.warmup_rounds + args.rounds) * args.samples_per_series;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis() as i64;
    // The last sample (with the largest offset) lands before now.
    let start_ms = (now_ms - total_samples as i64 * args.interval_ms) / 1000 * 1000;

    let generating = Instant::now();
    let all = bodies(&args, start_ms);
    let generate_seconds = generating.elapsed().as_secs_f64();
    let compressed: usize = all.iter().map(|b| b.bytes.len()).sum();
    let inflated: usize = all.iter().map(|b| b.inflated).sum();
    let largest = all.iter().map(|b| b.inflated).max().unwrap_or(0);
    println!(
        "remote write: {} requests generated in {generate_seconds:.2} s ({} series × {} samples per request, \
         {:.0} KB snappy / {:.0} KB protobuf on average, largest {:.0} KB protobuf)",
        all.len(),
        args.series_per_request.min(args.series),
        args.samples_per_series,
        compressed as f64 / all.len() as f64 / 1000.0,
        inflated as f64 / all.len() as f64 / 1000.0,
        largest as f64 / 1000.0,
    );

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.timeout_seconds))
        .pool_max_idle_per_host(args.concurrency)
        .build()
        .expect("an HTTP client");
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let split = args.warmup_rounds * per_round;
    let (warmup_bodies, measured_bodies) = all.split_at(split);
    let phase = |bodies: &[Body]| {
        (
            Arc::new(bodies.iter().map(|b| b.bytes.clone()).collect::<Vec<_>>()),
            Arc::new(bodies.iter().map(|b| b.samples).collect::<Vec<_>>()),
        )
    };

    let mut problems = Vec::new();
    let (warmup_outcomes, warmup_seconds, warmup_cpu) = if warmup_bodies.is_empty() {
        (Vec::new(), 0.0, json!(null))
    } else {
        let (bodies, samples) = phase(warmup_bodies);
        let (outcomes, seconds, p, cpu) =
            run_phase(&client, &args, bodies, samples, deadline).await;
        problems.extend(p);
        (outcomes, seconds, cpu)
    };
    let warmup = phase_json(
        &warmup_outcomes,
        warmup_seconds,
        warmup_bodies.len(),
        warmup_cpu,
    );
    if !warmup_bodies.is_empty() {
        print_phase("warm-up", &warmup);
    }
    let (bodies, samples) = phase(measured_bodies);
    let (outcomes, seconds, p, cpu) = run_phase(&client, &args, bodies, samples, deadline).await;
    problems.extend(p);
    let measured = phase_json(&outcomes, seconds, measured_bodies.len(), cpu);
    print_phase("measured", &measured);

    let failed = warmup_outcomes
        .iter()
        .chain(&outcomes)
        .filter(|(status, _, _)| status != "204")
        .count();
    let complete =
        warmup_outcomes.len() == warmup_bodies.len() && outcomes.len() == measured_bodies.len();
    for problem in &problems {
        eprintln!("remote_write_load: {problem}");
    }
    if !complete {
        eprintln!(
            "remote_write_load: stopped at the time bound ({} s) before every request was sent",
            args.max_seconds
        );
    }
    let result = json!({
        "url": args.url,
        "series": args.series,
        "samples_per_series": args.samples_per_series,
        "series_per_request": args.series_per_request,
        "requests_per_round": per_round,
        "warmup_rounds": args.warmup_rounds,
        "rounds": args.rounds,
        "concurrency": args.concurrency,
        "interval_ms": args.interval_ms,
        "first_timestamp_ms": start_ms,
        "generate_seconds": generate_seconds,
        "mean_body_bytes": compressed as f64 / all.len() as f64,
        "mean_inflated_bytes": inflated as f64 / all.len() as f64,
        "largest_inflated_bytes": largest,
        "warmup": warmup,
        "measured": measured,
        "not_204": failed,
        "complete": complete,
        "problems": problems,
    });
    if let Some(path) = &args.result {
        std::fs::write(
            path,
            serde_json::to_string_pretty(&result).expect("JSON serialises"),
        )
        .unwrap_or_else(|error| {
            eprintln!(
                "remote_write_load: cannot write {}: {error}",
                path.display()
            );
            std::process::exit(1);
        });
    }
    if failed > 0 {
        eprintln!("remote_write_load: {failed} responses were not 204");
        std::process::exit(1);
    }
}
