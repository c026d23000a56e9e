use resilient_analytics::metric::{NO_CONTROL_CHARACTERS, TIMESTAMP_YEARS};
use serde_json::Value;

use crate::helpers::spawn_app;

#[tokio::test]
async fn the_openapi_document_describes_every_endpoint_and_the_error_body() {
    let app = spawn_app().await;
    let response = app.get("/openapi.json").await;
    assert_eq!(response.status(), 200);
    let doc: Value = response.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for (path, method) in [
        ("/", "get"),
        ("/health", "get"),
        ("/health/live", "get"),
        ("/api/metrics", "post"),
        ("/api/metrics/summary", "get"),
        ("/api/metrics/list", "get"),
        ("/api/metrics/batch", "post"),
        ("/api/metrics/series", "get"),
        ("/metrics", "get"),
        ("/api/external", "get"),
        ("/api/external/failure-rate", "put"),
        ("/api/circuit-breaker/status", "get"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} missing"
        );
    }
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    assert!(doc["paths"]["/api/metrics"]["post"]["responses"]["429"].is_object());
}

#[tokio::test]
async fn the_document_states_the_validation_rules_of_metric_types_and_tags() {
    let app = spawn_app().await;
    let doc: Value = app.get("/openapi.json").await.json().await.unwrap();
    let point = &doc["components"]["schemas"]["MetricPoint"]["properties"];
    let mut type_patterns = vec![&point["type"]["pattern"]];
    for path in [
        "/api/metrics/summary",
        "/api/metrics/series",
        "/api/metrics/list",
    ] {
        let parameters = doc["paths"][path]["get"]["parameters"].as_array().unwrap();
        let type_parameter = parameters.iter().find(|p| p["name"] == "type").unwrap();
        type_patterns.push(&type_parameter["schema"]["pattern"]);
    }
    type_patterns.push(&point["tags"]["propertyNames"]["pattern"]);
    // The derive's attributes repeat the pattern as a literal; they must not drift apart.
    for pattern in type_patterns {
        assert_eq!(pattern, NO_CONTROL_CHARACTERS);
    }
    assert_eq!(point["tags"]["maxProperties"], 32);
    // The accepted years, for the point and for a series' range.
    assert_eq!(point["timestamp"]["pattern"], TIMESTAMP_YEARS);
    let series = doc["paths"]["/api/metrics/series"]["get"]["parameters"]
        .as_array()
        .unwrap();
    for name in ["from", "to"] {
        let parameter = series.iter().find(|p| p["name"] == name).unwrap();
        assert_eq!(parameter["schema"]["pattern"], TIMESTAMP_YEARS, "{name}");
    }
    let required = doc["components"]["schemas"]["MetricPoint"]["required"]
        .as_array()
        .unwrap();
    assert!(
        !required.iter().any(|field| field == "tags"),
        "tags are optional"
    );
    assert_eq!(point["value"]["maximum"], 1e100);
}

#[tokio::test]
async fn docs_serve_an_html_page() {
    let app = spawn_app().await;
    let response = app.get("/docs/").await;
    assert_eq!(response.status(), 200);
    let html = response.text().await.unwrap();
    assert!(html.to_lowercase().contains("<html"), "{html}");
    // /docs itself leads there.
    assert_eq!(app.get("/docs").await.status(), 200);
}
