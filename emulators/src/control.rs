//! The control API every emulator shares (`/_control/...`): the recorder, the
//! counters (budget violations above all) and the front-door faults.
//! Channel-specific controls (seeding, orders, buckets) live with each emulator.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::faults::FaultPlan;
use crate::server::FrontDoor;

pub(crate) fn routes(front: Arc<FrontDoor>) -> Router {
    Router::new()
        .route("/_control/requests", get(requests).delete(clear_requests))
        .route("/_control/counters", get(counters))
        .route("/_control/faults", post(set_faults).delete(clear_faults))
        .with_state(front)
}

async fn requests(State(front): State<Arc<FrontDoor>>) -> impl IntoResponse {
    Json(front.recorder.requests())
}

async fn clear_requests(State(front): State<Arc<FrontDoor>>) -> impl IntoResponse {
    front.recorder.clear();
    StatusCode::NO_CONTENT
}

async fn counters(State(front): State<Arc<FrontDoor>>) -> impl IntoResponse {
    let counters = front.recorder.counters();
    Json(json!({"counters": counters, "budget_violations": counters.throttled}))
}

async fn set_faults(
    State(front): State<Arc<FrontDoor>>,
    Json(plan): Json<FaultPlan>,
) -> impl IntoResponse {
    front.faults.apply(&plan);
    StatusCode::NO_CONTENT
}

async fn clear_faults(State(front): State<Arc<FrontDoor>>) -> impl IntoResponse {
    front.faults.clear();
    StatusCode::NO_CONTENT
}
