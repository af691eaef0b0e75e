//! SAP's own control routes (`/_control/sap/...`): create-only faults, the
//! posting window, billing and posting a request by hand, expiring CSRF
//! tokens, and the remote state.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::{CreateFaults, Posting, SapEmulator};

pub(super) fn routes(emulator: SapEmulator) -> Router {
    Router::new()
        .route(
            "/_control/sap/faults",
            post(set_faults).delete(clear_faults),
        )
        .route("/_control/sap/posting", post(set_posting))
        .route("/_control/sap/bill", post(bill))
        .route("/_control/sap/post", post(post_request))
        .route("/_control/sap/cancel", post(cancel))
        .route("/_control/sap/tokens", axum::routing::delete(expire_tokens))
        .route("/_control/sap/credit_memo_requests", get(requests))
        .with_state(emulator)
}

async fn set_faults(
    State(emulator): State<SapEmulator>,
    Json(plan): Json<CreateFaults>,
) -> StatusCode {
    emulator.set_create_faults(&plan);
    StatusCode::NO_CONTENT
}

async fn clear_faults(State(emulator): State<SapEmulator>) -> StatusCode {
    emulator.clear_create_faults();
    StatusCode::NO_CONTENT
}

async fn set_posting(
    State(emulator): State<SapEmulator>,
    Json(posting): Json<Posting>,
) -> StatusCode {
    emulator.set_posting(posting);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct Target {
    credit_memo_request: String,
}

fn document_or_404(document: Option<String>) -> Response {
    match document {
        Some(billing_document) => {
            Json(json!({"billing_document": billing_document})).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no such credit memo request"})),
        )
            .into_response(),
    }
}

async fn bill(State(emulator): State<SapEmulator>, Json(target): Json<Target>) -> Response {
    document_or_404(emulator.bill(&target.credit_memo_request))
}

async fn post_request(State(emulator): State<SapEmulator>, Json(target): Json<Target>) -> Response {
    document_or_404(emulator.post(&target.credit_memo_request))
}

async fn cancel(State(emulator): State<SapEmulator>, Json(target): Json<Target>) -> StatusCode {
    if emulator.cancel(&target.credit_memo_request) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

async fn expire_tokens(State(emulator): State<SapEmulator>) -> StatusCode {
    emulator.expire_tokens();
    StatusCode::NO_CONTENT
}

async fn requests(State(emulator): State<SapEmulator>) -> Response {
    Json(emulator.credit_memo_requests()).into_response()
}
