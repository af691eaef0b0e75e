//! Login with Amazon: `POST /auth/o2/token` (CHANNELS.md B; the token is sent
//! as `x-amz-access-token`). Grants: `refresh_token` (a seller's
//! authorisation) and `client_credentials` (grantless operations).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{Response, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use serde_json::json;

use super::AmazonState;

pub(super) fn routes(state: Arc<AmazonState>) -> Router {
    Router::new()
        .route("/auth/o2/token", post(token))
        .with_state(state)
}

/// LWA's OAuth error body.
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response<Body> {
    (
        status,
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

/// The form may also come as JSON (LWA accepts both).
fn read_form(body: &[u8]) -> HashMap<String, String> {
    if let Ok(serde_json::Value::Object(fields)) = serde_json::from_slice(body) {
        return fields
            .into_iter()
            .filter_map(|(key, value)| value.as_str().map(|text| (key, text.to_owned())))
            .collect();
    }
    serde_urlencoded::from_bytes(body).unwrap_or_default()
}

async fn token(State(state): State<Arc<AmazonState>>, body: Bytes) -> Response<Body> {
    let form = read_form(&body);
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or("");
    let config = &state.config;
    if field("client_id") != config.client_id || field("client_secret") != config.client_secret {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Client authentication failed",
        );
    }
    match field("grant_type") {
        "refresh_token" if field("refresh_token") == config.refresh_token => {}
        "refresh_token" => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "The request has an invalid grant parameter : refresh_token",
            )
        }
        "client_credentials" if !field("scope").is_empty() => {}
        "client_credentials" => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                "The request has an invalid parameter : scope",
            )
        }
        "" => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "The request is missing a required parameter : grant_type",
            )
        }
        _ => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "The authorization grant type is not supported by the authorization server",
            )
        }
    }
    let access_token = format!("Atza|{}", uuid::Uuid::new_v4().simple());
    state.tokens.lock().insert(
        access_token.clone(),
        (
            config.client_id.clone(),
            Instant::now() + config.access_token_lifetime,
        ),
    );
    let mut body = json!({
        "access_token": access_token,
        "token_type": "bearer",
        "expires_in": config.access_token_lifetime.as_secs(),
    });
    if field("grant_type") == "refresh_token" {
        body["refresh_token"] = json!(config.refresh_token);
    }
    axum::Json(body).into_response()
}
