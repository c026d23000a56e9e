//! Key management for admin keys: the command line's `keys create|list|revoke` over HTTP.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};

use super::{
    AppState,
    error::{ApiError, ErrorBody, Result},
    extract::ApiJson,
};
use crate::{
    app::access::{CreatedKey, NewKey},
    auth::{KeyId, KeyRecord},
    metric::FieldError,
};

/// Make a key for a tenant. Its secret is in this answer only: it is stored as a hash.
#[utoipa::path(
    post, path = "/api/admin/keys", tag = "admin",
    request_body = NewKey,
    responses(
        (status = 201, description = "The key, with its secret (`key`), shown this once", body = CreatedKey),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 408, description = "The body did not arrive within BODY_READ_TIMEOUT_SECONDS", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 401, description = "No valid key", body = ErrorBody),
        (status = 403, description = "The key lacks the admin scope", body = ErrorBody),
        (status = 422, description = "Invalid tenant, scopes, quota or expiry", body = ErrorBody),
        (status = 503, description = "PostgreSQL unavailable", body = ErrorBody),
    )
)]
pub(super) async fn create_key(
    State(state): State<AppState>,
    ApiJson(new): ApiJson<NewKey>,
) -> Result<(StatusCode, Json<CreatedKey>)> {
    let created = state.keys.create_key(new).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Every key, newest first, without secrets.
#[utoipa::path(
    get, path = "/api/admin/keys", tag = "admin",
    responses(
        (status = 200, description = "The keys", body = [KeyRecord]),
        (status = 401, description = "No valid key", body = ErrorBody),
        (status = 403, description = "The key lacks the admin scope", body = ErrorBody),
        (status = 503, description = "PostgreSQL unavailable", body = ErrorBody),
    )
)]
pub(super) async fn list_keys(State(state): State<AppState>) -> Result<Json<Vec<KeyRecord>>> {
    Ok(Json(state.keys.list_keys().await?))
}

/// Revoke a key: every instance refuses it within seconds. Revoking it again changes nothing.
#[utoipa::path(
    delete, path = "/api/admin/keys/{id}", tag = "admin",
    params(("id" = String, Path, description = "The key's id (16 hex digits)", pattern = "^[0-9a-f]{16}$")),
    responses(
        (status = 200, description = "The revoked key", body = KeyRecord),
        (status = 400, description = "Not a key id", body = ErrorBody),
        (status = 401, description = "No valid key", body = ErrorBody),
        (status = 403, description = "The key lacks the admin scope", body = ErrorBody),
        (status = 404, description = "No such key", body = ErrorBody),
        (status = 503, description = "PostgreSQL unavailable", body = ErrorBody),
    )
)]
pub(super) async fn revoke_key(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<KeyRecord>> {
    let id: KeyId = id
        .parse()
        .map_err(|message| ApiError::InvalidQuery(vec![FieldError::new("id", message)]))?;
    let revoked = state.keys.revoke_key(&id).await?;
    revoked.map(Json).ok_or(ApiError::NotFound)
}
