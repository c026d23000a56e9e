use serde_json::{Value, json};

use crate::helpers::spawn_app;

#[tokio::test]
async fn list_returns_points_newest_first_filtered_and_limited() {
    let app = spawn_app().await;
    for (minute, metric_type) in [(1, "a"), (3, "b"), (2, "a"), (4, "a")] {
        let body = json!({
            "timestamp": format!("2026-05-01T10:0{minute}:00Z"),
            "value": minute,
            "type": metric_type,
            "tags": {"minute": minute.to_string()},
        });
        assert_eq!(app.post_json("/api/metrics", &body).await.status(), 201);
    }

    let all: Value = app.get("/api/metrics/list").await.json().await.unwrap();
    let values: Vec<f64> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["value"].as_f64().unwrap())
        .collect();
    assert_eq!(values, [4.0, 3.0, 2.0, 1.0]);

    let only_a: Value = app
        .get("/api/metrics/list?type=a&limit=2")
        .await
        .json()
        .await
        .unwrap();
    let only_a = only_a.as_array().unwrap();
    assert_eq!(only_a.len(), 2);
    assert_eq!(only_a[0]["type"], "a");
    assert_eq!(only_a[0]["value"], 4.0);
    assert_eq!(only_a[0]["timestamp"], "2026-05-01T10:04:00Z");
    assert_eq!(only_a[0]["tags"], json!({"minute": "4"}));
    assert!(only_a[0]["id"].as_i64().is_some());
}

#[tokio::test]
async fn list_rejects_limits_outside_1_to_1000() {
    let app = spawn_app().await;
    for limit in ["0", "1001", "-1", "ten", ""] {
        let response = app.get(&format!("/api/metrics/list?limit={limit}")).await;
        assert_eq!(response.status(), 400, "limit={limit}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "INVALID_QUERY");
        assert_eq!(body["errors"][0]["field"], "limit");
    }
    assert_eq!(app.get("/api/metrics/list?limit=1000").await.status(), 200);
}
