//! Spawns the real server over HTTP against real PostgreSQL and Redis containers.
//!
//! Image names come from TEST_POSTGRES_IMAGE / TEST_REDIS_IMAGE ("name:tag"), defaulting to
//! the upstream images, so `cargo test` works wherever images can be pulled; on machines
//! without a registry, scripts/build-offline-images.sh builds stand-ins.

use std::{
    io::{BufRead, BufReader},
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use resilient_analytics::{
    config::{LogFormat, Settings},
    startup::Application,
    telemetry,
};
use serde_json::{Value, json};
use testcontainers::{ContainerAsync, ImageExt, core::IntoContainerPort, runners::AsyncRunner};
use testcontainers_modules::{postgres::Postgres, redis::Redis};
use tokio::{sync::oneshot, task::JoinHandle};

const DEFAULT_POSTGRES_IMAGE: &str = "postgres:16-alpine";
const DEFAULT_REDIS_IMAGE: &str = "redis:7-alpine";

/// "name:tag" from the environment, or the default.
fn image(variable: &str, default: &str) -> (String, String) {
    let reference = std::env::var(variable).unwrap_or_else(|_| default.to_owned());
    match reference.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name.to_owned(), tag.to_owned()),
        _ => (reference, "latest".to_owned()),
    }
}

/// A free port on the host, so a restarted container keeps its address.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("no free port")
        .port()
}

fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        telemetry::init(
            "info,resilient_analytics=debug",
            LogFormat::Text,
            std::io::stdout,
        );
    } else {
        telemetry::init("off", LogFormat::Text, std::io::sink);
    }
}

/// A PostgreSQL container published on `port` of the host.
pub(crate) async fn start_postgres(port: u16) -> ContainerAsync<Postgres> {
    let (name, tag) = image("TEST_POSTGRES_IMAGE", DEFAULT_POSTGRES_IMAGE);
    Postgres::default()
        .with_name(name)
        .with_tag(tag)
        .with_mapped_port(port, 5432.tcp())
        .start()
        .await
        .expect("PostgreSQL container did not start")
}

/// A Redis container published on `port` of the host.
pub(crate) async fn start_redis(port: u16) -> ContainerAsync<Redis> {
    let (name, tag) = image("TEST_REDIS_IMAGE", DEFAULT_REDIS_IMAGE);
    Redis::default()
        .with_name(name)
        .with_tag(tag)
        .with_mapped_port(port, 6379.tcp())
        .start()
        .await
        .expect("Redis container did not start")
}

/// The seed's defaults, on a free local port, with a reliable external service.
pub(crate) fn test_settings(postgres_port: u16, redis_port: u16) -> Settings {
    init_logs();
    let mut settings = Settings::from_lookup(|_| None).expect("default settings");
    settings.host = "127.0.0.1".into();
    settings.port = 0;
    settings.database_url =
        format!("postgres://postgres:postgres@127.0.0.1:{postgres_port}/postgres");
    settings.redis_url = format!("redis://127.0.0.1:{redis_port}/0");
    settings.external_service.failure_rate = 0.0;
    settings
}

pub(crate) struct TestApp {
    pub(crate) address: String,
    pub(crate) client: reqwest::Client,
    pub(crate) settings: Settings,
    pub(crate) postgres: ContainerAsync<Postgres>,
    pub(crate) redis: ContainerAsync<Redis>,
    server: Option<(oneshot::Sender<()>, JoinHandle<std::io::Result<()>>)>,
}

pub(crate) async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts fresh PostgreSQL and Redis containers and the server; `configure` adjusts the
/// settings (see `test_settings`).
pub(crate) async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    let (postgres_port, redis_port) = (free_port(), free_port());
    let (postgres, redis) = tokio::join!(start_postgres(postgres_port), start_redis(redis_port));
    let mut settings = test_settings(postgres_port, redis_port);
    configure(&mut settings);
    let mut app = TestApp {
        address: String::new(),
        client: http_client(),
        settings,
        postgres,
        redis,
        server: None,
    };
    app.start_server().await;
    app.wait_until_healthy().await;
    app
}

pub(crate) fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

impl TestApp {
    async fn start_server(&mut self) {
        let application = Application::build(self.settings.clone())
            .await
            .expect("server did not build");
        self.address = format!("http://127.0.0.1:{}", application.port());
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(application.run_until(async {
            let _ = stopped.await;
        }));
        self.server = Some((stop, server));
    }

    /// Stops the server gracefully and starts a new process-equivalent on a new port.
    pub(crate) async fn restart_server(&mut self) {
        let (stop, server) = self.server.take().expect("server running");
        let _ = stop.send(());
        server.await.unwrap().unwrap();
        self.start_server().await;
        self.wait_until_healthy().await;
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub(crate) async fn wait_until_healthy(&self) {
        self.wait_for_health("healthy", Duration::from_secs(30))
            .await;
    }

    /// Polls `/health` until its status is `status`.
    pub(crate) async fn wait_for_health(&self, status: &str, within: Duration) {
        eventually(within, || async {
            let response = self.client.get(self.url("/health")).send().await.ok()?;
            let body: Value = response.json().await.ok()?;
            (body["status"] == status).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("health did not become {status} within {within:?}"));
    }

    pub(crate) async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request failed")
    }

    pub(crate) async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request failed")
    }

    /// Posts a metric; the limit of 10 per minute applies, so tests that post many raise it.
    pub(crate) async fn post_metric(&self, metric_type: &str, value: f64) -> reqwest::Response {
        self.post_json("/api/metrics", &metric(metric_type, value))
            .await
    }

    pub(crate) async fn summary(
        &self,
        query: &str,
    ) -> (reqwest::StatusCode, Option<String>, Value) {
        let response = self.get(&format!("/api/metrics/summary?{query}")).await;
        let status = response.status();
        let cache = response
            .headers()
            .get("x-cache")
            .map(|v| v.to_str().unwrap().to_owned());
        (status, cache, response.json().await.unwrap())
    }

    pub(crate) async fn set_failure_rate(&self, rate: f64) {
        let response = self
            .client
            .put(self.url("/api/external/failure-rate"))
            .json(&json!({ "failure_rate": rate }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }

    /// Rows in the metrics table, read directly as an analyst would.
    pub(crate) async fn count_rows(&self, metric_type: &str) -> i64 {
        self.count(
            "select count(*) from metrics where metric_type = $1",
            metric_type,
        )
        .await
    }

    /// A connection pool to the test's PostgreSQL, for reading (or arranging) rows directly.
    pub(crate) async fn database(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.settings.database_url)
            .await
            .unwrap()
    }

    /// The count that `query` (with one text parameter) reads straight from PostgreSQL.
    pub(crate) async fn count(&self, query: &'static str, parameter: &str) -> i64 {
        let pool = sqlx::PgPool::connect(&self.settings.database_url)
            .await
            .unwrap();
        let count: i64 = sqlx::query_scalar(query)
            .bind(parameter)
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        count
    }
}

pub(crate) const BINARY: &str = env!("CARGO_BIN_EXE_resilient-analytics");

/// Runs the binary once (e.g. `keys create ...`) against the database at `database_url`,
/// with no other environment; its exit status, stdout and stderr.
pub(crate) fn run_binary(database_url: &str, args: &[&str]) -> std::process::Output {
    Command::new(BINARY)
        .env_clear()
        .env("DATABASE_URL", database_url)
        .args(args)
        .output()
        .expect("binary did not run")
}

/// The release binary's process, configured like a deployment, pointed at the test's
/// containers.
pub(crate) struct ServerProcess {
    pub(crate) child: Child,
    pub(crate) address: String,
    /// Its stdout goes to a file: a pipe nobody reads would fill up and stall the server.
    log_path: std::path::PathBuf,
}

impl ServerProcess {
    pub(crate) fn spawn(app: &TestApp, extra_env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let log_path = std::env::temp_dir().join(format!("resilient-analytics-test-{port}.log"));
        let log_file = std::fs::File::create(&log_path).unwrap();
        let mut command = Command::new(BINARY);
        command
            .env_clear()
            .env("APP_HOST", "127.0.0.1")
            .env("APP_PORT", port.to_string())
            .env("DATABASE_URL", &app.settings.database_url)
            .env("REDIS_URL", &app.settings.redis_url)
            .env("EXTERNAL_SERVICE_FAILURE_RATE", "0")
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(log_file))
            .stderr(Stdio::inherit());
        for (name, value) in extra_env {
            command.env(name, value);
        }
        let child = command.spawn().expect("binary did not start");
        Self {
            child,
            address: format!("http://127.0.0.1:{port}"),
            log_path,
        }
    }

    pub(crate) async fn wait_until_healthy(&self, client: &reqwest::Client) {
        let url = format!("{}/health", self.address);
        eventually(Duration::from_secs(20), || async {
            let response = client.get(&url).send().await.ok()?;
            let body: Value = response.json().await.ok()?;
            (body["status"] == "healthy").then_some(())
        })
        .await
        .expect("the binary did not become healthy");
    }

    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits (bounded) for the process to exit; its exit status.
    pub(crate) async fn wait_for_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let child = &mut self.child;
        eventually(within, || {
            let status = child.try_wait().unwrap();
            async move { status }
        })
        .await
        .expect("the process did not exit in time")
    }

    /// Its stdout, one line each.
    pub(crate) fn log_lines(&self) -> Vec<String> {
        let log = std::fs::File::open(&self.log_path).unwrap();
        BufReader::new(log).lines().map_while(Result::ok).collect()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log_path);
    }
}

/// A metric point body timestamped now.
pub(crate) fn metric(metric_type: &str, value: f64) -> Value {
    json!({
        "timestamp": chrono::Utc::now().to_rfc3339(),
        "value": value,
        "type": metric_type,
    })
}

/// Polls `check` until it yields a value or `within` has passed.
pub(crate) async fn eventually<T, F, Fut>(within: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A server with `AUTH_MODE=required` (limits high enough that only a test's own refuse
/// anything) and a key with the read and write scopes of `tenant`, created through the API.
pub(crate) async fn spawn_app_with_key(tenant: &str) -> (TestApp, String) {
    spawn_app_with_key_and(tenant, |_| {}).await
}

/// [`spawn_app_with_key`], with the settings adjusted further by `configure`.
pub(crate) async fn spawn_app_with_key_and(
    tenant: &str,
    configure: impl FnOnce(&mut Settings),
) -> (TestApp, String) {
    use resilient_analytics::{
        auth::{ApiKey, AuthMode},
        rate_limiter::Quota,
    };
    let admin = ApiKey::generate();
    let bootstrap = admin.clone();
    let app = spawn_app_with(move |settings| {
        settings.auth.mode = AuthMode::Required;
        settings.auth.bootstrap_admin_key = Some(bootstrap);
        settings.auth.failure_limit = Quota::new(1_000, 60).unwrap();
        settings.rate_limit.requests = 100_000;
        configure(settings);
    })
    .await;
    let new_key = json!({"tenant": tenant, "scopes": ["read", "write"]});
    let created = eventually(Duration::from_secs(10), || async {
        let response = app
            .client
            .post(app.url("/api/admin/keys"))
            .bearer_auth(admin.reveal())
            .json(&new_key)
            .send()
            .await
            .ok()?;
        (response.status() == 201).then_some(response.json::<Value>().await.ok()?)
    })
    .await
    .expect("no key created within 10 s");
    let key = created["key"].as_str().expect("a key").to_owned();
    (app, key)
}
