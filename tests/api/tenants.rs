//! Tenants: the service reads only the caller's tenant, and an analyst login mapped to a
//! tenant reads only that tenant's rows, straight from PostgreSQL, and changes nothing.

use std::time::Duration;

use serde_json::Value;
use sqlx::{PgPool, postgres::PgConnectOptions};

use crate::helpers::{TestApp, eventually, spawn_app};

/// PostgreSQL's insufficient_privilege.
const INSUFFICIENT_PRIVILEGE: &str = "42501";

async fn owner_pool(app: &TestApp) -> PgPool {
    PgPool::connect(&app.settings.database_url).await.unwrap()
}

/// Rows of tenant acme, written as the auth layer's tenants will be: a point with its series
/// and its delta, and a folded rollup, all of type cpu like the default tenant's point.
async fn insert_acme_rows(pool: &PgPool) {
    for statement in [
        "with series as (
             insert into metric_series (tenant, metric_type, tags) values ('acme', 'cpu', '{}') returning id
         )
         insert into metrics (tenant, metric_type, value, recorded_at, series_id)
         select 'acme', 'cpu', 1000, now(), id from series",
        "insert into metric_rollup_deltas
             (tenant, metric_type, minute, count, sum, min, max, latest_at, latest_id, latest_value, sketch)
         values ('acme', 'cpu', date_trunc('minute', now(), 'UTC'), 1, 1000, 1000, 1000, now(), 0, 1000, '{}')",
        "insert into metric_rollups
             (tenant, metric_type, resolution, bucket_start, count, sum, min, max, latest_at, latest_id, latest_value, sketch)
         values ('acme', 'cpu', 'day', '2020-01-01', 5, 5000, 1000, 1000, '2020-01-01', 0, 1000, '{}')",
    ] {
        sqlx::query(statement).execute(pool).await.unwrap();
    }
}

/// The distinct tenants of a table's rows that `pool` can see.
async fn tenants_in(pool: &PgPool, table: &'static str) -> Vec<String> {
    // The table is one of this file's literals.
    let query = format!("select distinct tenant from {table} order by tenant");
    sqlx::query_scalar(sqlx::AssertSqlSafe(query))
        .fetch_all(pool)
        .await
        .unwrap()
}

fn refused_for_privilege(result: Result<impl std::fmt::Debug, sqlx::Error>) -> bool {
    match result {
        Err(sqlx::Error::Database(error)) => {
            error.code().as_deref() == Some(INSUFFICIENT_PRIVILEGE)
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn the_service_reads_only_its_callers_tenant() {
    let app = spawn_app().await;
    assert_eq!(app.post_metric("cpu", 1.0).await.status(), 201);
    let owner = owner_pool(&app).await;
    insert_acme_rows(&owner).await;

    let list: Value = app.get("/api/metrics/list").await.json().await.unwrap();
    let values: Vec<f64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["value"].as_f64().unwrap())
        .collect();
    assert_eq!(values, [1.0], "{list}");
    let typed: Value = app
        .get("/api/metrics/list?type=cpu")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(typed.as_array().unwrap().len(), 1, "{typed}");

    let (_, _, summary) = app.summary("type=cpu").await;
    assert_eq!(summary["count"], 1, "{summary}");
    assert_eq!(summary["max_value"], 1.0, "{summary}");

    let series: Value = app
        .get("/api/metrics/series?type=cpu&from=2020-01-01T00:00:00Z&to=2020-01-02T00:00:00Z&bucket=1d")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(series["buckets"][0]["count"], 0, "{series}");
}

#[tokio::test]
async fn an_analyst_reads_only_their_tenants_rows_and_changes_nothing() {
    let app = spawn_app().await;
    assert_eq!(app.post_metric("cpu", 1.0).await.status(), 201);
    let owner = owner_pool(&app).await;
    insert_acme_rows(&owner).await;
    // The default tenant's point is folded into the rollups within a second or so.
    eventually(Duration::from_secs(10), || async {
        let tenants = tenants_in(&owner, "metric_rollups").await;
        (tenants == ["acme", "default"]).then_some(())
    })
    .await
    .expect("the default tenant's point was not rolled up");

    for statement in [
        "create role alice login password 'alice-secret' in role metrics_reader",
        "insert into analyst_tenants values ('alice', 'acme')",
    ] {
        sqlx::query(statement).execute(&owner).await.unwrap();
    }
    let options = app
        .settings
        .database_url
        .parse::<PgConnectOptions>()
        .unwrap()
        .username("alice")
        .password("alice-secret");
    let alice = PgPool::connect_with(options).await.unwrap();

    assert_eq!(tenants_in(&alice, "metrics").await, ["acme"]);
    assert_eq!(tenants_in(&alice, "metric_series").await, ["acme"]);
    assert_eq!(tenants_in(&alice, "metric_rollups").await, ["acme"]);
    // Deltas are folded into the rollups within a second: whatever is left is acme's.
    let deltas = tenants_in(&alice, "metric_rollup_deltas").await;
    assert!(deltas.iter().all(|tenant| tenant == "acme"), "{deltas:?}");
    let visible: Vec<f64> = sqlx::query_scalar("select value from metrics")
        .fetch_all(&alice)
        .await
        .unwrap();
    assert_eq!(visible, [1000.0]);

    for statement in [
        "insert into metrics (tenant, metric_type, value, recorded_at) values ('acme', 'cpu', 1, now())",
        "update metrics set value = 0",
        "delete from metric_rollups",
        "select * from analyst_tenants",
        "update analyst_tenants set tenant = 'default'",
    ] {
        let result = sqlx::query(statement).execute(&alice).await;
        assert!(refused_for_privilege(result), "{statement}");
    }
    // Becoming the group role does not widen the view: the mapping is of the login.
    let mut connection = alice.acquire().await.unwrap();
    sqlx::query("set role metrics_reader")
        .execute(&mut *connection)
        .await
        .unwrap();
    let tenants: Vec<String> = sqlx::query_scalar("select distinct tenant from metrics")
        .fetch_all(&mut *connection)
        .await
        .unwrap();
    assert_eq!(tenants, ["acme"]);
    drop(connection);
    alice.close().await;

    // The service, the tables' owner, still writes and reads every tenant's rows.
    assert_eq!(app.post_metric("cpu", 2.0).await.status(), 201);
    assert_eq!(tenants_in(&owner, "metrics").await, ["acme", "default"]);
    owner.close().await;
}
