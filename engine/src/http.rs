//! The HTTP surface for ops and agents: `/metrics`, `/healthz`, `/readyz` and
//! `GET /v1/profiles/{id}` (the committed 360-degree profile, as
//! [`ProfileView`](crate::profile_view::ProfileView)).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::metrics::Metrics;
use crate::runtime::Progress;
use crate::state::StateStore;

/// What the handlers read.
#[derive(Clone)]
pub struct AppState {
    /// Metrics to expose.
    pub metrics: Metrics,
    /// Committed profiles.
    pub state: Arc<StateStore>,
    /// Readiness.
    pub progress: Arc<Progress>,
    /// Emotional-state thresholds, for the state the profile API shows.
    pub emotion: rapport_model::emotion::EmotionConfig,
}

/// The router, separate from serving so tests can call it directly.
pub fn router(app: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/v1/profiles/{id}", get(profile))
        .with_state(app)
}

/// Serves the router on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, app: AppState) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "http listening");
    axum::serve(listener, router(app)).await?;
    Ok(())
}

async fn metrics(State(app): State<AppState>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
}

async fn ready(State(app): State<AppState>) -> Response {
    if app.progress.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no partitions assigned yet\n",
        )
            .into_response()
    }
}

async fn profile(State(app): State<AppState>, Path(id): Path<String>) -> Response {
    match app.state.find_profile(&id) {
        Ok(Some(p)) => Json(crate::profile_view::ProfileView::of(&p, &app.emotion)).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, format!("no profile for {id:?}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}
