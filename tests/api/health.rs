use serde_json::Value;

use crate::helpers::spawn_app;

#[tokio::test]
async fn root_names_the_service_and_its_version() {
    let app = spawn_app().await;
    let response = app.get("/").await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["name"], "Resilient Analytics API");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(body["docs"], "/docs");
}

#[tokio::test]
async fn health_is_healthy_when_both_dependencies_answer() {
    let app = spawn_app().await;
    let response = app.get("/health").await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["database_connected"], true);
    assert_eq!(body["redis_connected"], true);
    assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));

    let live = app.get("/health/live").await;
    assert_eq!(live.status(), 200);
}

#[tokio::test]
async fn unknown_routes_and_methods_get_the_error_body() {
    let app = spawn_app().await;
    let response = app.get("/nope").await;
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "NOT_FOUND");
    assert!(body["message"].is_string() && body["timestamp"].is_string());

    let response = app
        .client
        .delete(app.url("/api/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "METHOD_NOT_ALLOWED");
}
