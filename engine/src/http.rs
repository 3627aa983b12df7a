//! The HTTP surface for ops and agents: `/metrics`, `/healthz`, `/readyz` and
//! `GET /v1/profiles/{id}` (the committed 360-degree profile, as
//! [`ProfileView`](crate::profile_view::ProfileView)).
//!
//! The profile API returns personal data: with a token configured it answers
//! only requests that carry it ([`crate::http_auth`]); the other endpoints stay
//! open for Prometheus and probes. With pseudonymization on
//! ([`crate::pseudonym`]), callers still ask by the clear customer id: the API
//! hashes it the way ingest does before looking the profile up, and finds the
//! owning partition from the clear id, as producers key records by it.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::metrics::Metrics;
use crate::owners::Owners;
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
    /// Who owns which customer; without it, every locally stored profile is served.
    pub owners: Option<Arc<Owners>>,
    /// This instance's id.
    pub instance_id: String,
    /// The token the profile API requires; `None`: open (loopback only).
    pub bearer: Option<Arc<crate::http_auth::BearerToken>>,
    /// Hashes the requested customer id as ingest does; `None`: off.
    pub pseudonymizer: Option<Arc<crate::pseudonym::Pseudonymizer>>,
}

impl AppState {
    /// What the handlers of an engine running on `cfg` in this process read,
    /// serving the profiles stored here (no owner lookup across a group).
    pub fn local(
        cfg: &crate::Config,
        state: Arc<StateStore>,
        metrics: Metrics,
        progress: Arc<Progress>,
    ) -> Self {
        AppState {
            metrics,
            state,
            progress,
            emotion: cfg.emotion.clone(),
            owners: None,
            instance_id: cfg.engine.instance_id.clone(),
            bearer: cfg.http.bearer.clone(),
            pseudonymizer: cfg.pseudonymizer.clone(),
        }
    }
}

/// The router, separate from serving so tests can call it directly.
pub fn router(app: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(health))
        .route("/readyz", get(ready))
        .route("/v1/profiles/{id}", get(profile))
        .with_state(app)
}

/// `/healthz`: 200 while the instance is alive and well, 503 with the reason
/// when it has been out of its consumer group for too long
/// ([`Progress::health`]): a restart joins afresh.
async fn health(State(app): State<AppState>) -> Response {
    match app.progress.health(chrono::Utc::now().timestamp_millis()) {
        Ok(()) => "ok\n".into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

/// Serves the router on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, app: AppState) -> anyhow::Result<()> {
    if app.bearer.is_none() && !crate::http_auth::is_loopback(&addr) {
        anyhow::bail!("http.listen {addr} is beyond loopback and no profile API token is configured (http.token_file or http.token_env)");
    }
    serve_router(addr, router(app)).await
}

/// Serves `router` (the engine's, with optional routes merged in, such as
/// `POST /privacy/erasure`) on `addr` until the process ends.
pub async fn serve_router(addr: SocketAddr, router: Router) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "http listening");
    axum::serve(listener, router).await?;
    Ok(())
}

async fn metrics(State(app): State<AppState>) -> impl IntoResponse {
    let now_ms = chrono::Utc::now().timestamp_millis();
    app.metrics
        .consumer_poll_age
        .set(app.progress.poll_age_seconds(now_ms));
    (
        [("content-type", "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
}

/// 200 once every owned partition is restored and consuming; 503 before, saying
/// which partitions are still being restored and how far each has to go.
async fn ready(State(app): State<AppState>) -> Response {
    if app.progress.ready.load(Ordering::SeqCst) {
        return (StatusCode::OK, "ready\n").into_response();
    }
    let restoring = app
        .progress
        .restoring
        .lock()
        .map(|r| r.clone())
        .unwrap_or_default();
    let body = if restoring.is_empty() {
        "not ready: waiting for partitions from the group\n".to_owned()
    } else {
        let mut b = String::from("not ready: restoring state from the changelog\n");
        for r in restoring {
            b.push_str(&format!(
                "partition {}: {} records applied, {} offsets left\n",
                r.partition, r.applied, r.remaining
            ));
        }
        b
    };
    (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
}

/// The committed profile of customer `id`, when this instance owns it. For a
/// customer another instance owns: a redirect to that instance (with
/// `http.advertised_url`) or `421 Misdirected Request` naming it; `503` while
/// the customer's partition is restored here or has no owner (a rebalance).
async fn profile(
    State(app): State<AppState>,
    Path(clear_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = crate::http_auth::refusal(app.bearer.as_deref(), &headers) {
        return refused;
    }
    // The id the profile is stored under; the clear id only places it.
    let id = match &app.pseudonymizer {
        Some(p) => p.profile_id(&clear_id),
        None => clear_id.clone(),
    };
    let Some(owners) = app.owners.clone() else {
        return match app.state.find(&id) {
            Ok(p) => local_profile(&app, &id, p),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        };
    };
    let p = owners.partition(&clear_id);
    if app.progress.owns(p) {
        return match app.state.get(p, &id) {
            Ok(s) => local_profile(&app, &id, s),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        };
    }
    if app.progress.is_restoring(p) {
        return unavailable(format!(
            "partition {p}, which holds {id:?}, is being restored here; retry shortly"
        ));
    }
    let lookup = tokio::task::spawn_blocking({
        let owners = owners.clone();
        move || owners.owner(p)
    })
    .await;
    match lookup {
        Ok(Ok(Some(owner))) if owner != app.instance_id => {
            let url = owners.url(&owner, &clear_id);
            let body = Json(serde_json::json!({
                "error": "owned by another instance",
                "customer_id": id,
                "partition": p,
                "owner": owner,
                "url": url,
            }));
            match url {
                Some(u) => (
                    StatusCode::TEMPORARY_REDIRECT,
                    [(axum::http::header::LOCATION, u)],
                    body,
                )
                    .into_response(),
                None => (StatusCode::MISDIRECTED_REQUEST, body).into_response(),
            }
        }
        Ok(Ok(_)) => unavailable(format!(
            "partition {p}, which holds {id:?}, is changing owner; retry shortly"
        )),
        Ok(Err(e)) => unavailable(format!("{e}")),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// The profile stored under `id` here; an anonymous id whose history moved to
/// a customer answers `404` naming the customer.
fn local_profile(app: &AppState, id: &str, s: Option<crate::state::Stored>) -> Response {
    match s {
        Some(s) if s.link().is_some() => {
            let to = s.link().map(|l| l.customer_id.clone());
            let body = Json(serde_json::json!({
                "error": "no profile: this anonymous id's history was merged into a customer's profile",
                "anonymous_id": id,
                "merged_into": to,
            }));
            (StatusCode::NOT_FOUND, body).into_response()
        }
        Some(s) => {
            let mut view = crate::profile_view::ProfileView::of(&s.profile, &app.emotion);
            view.identity = s
                .identity
                .as_deref()
                .map(crate::profile_view::IdentityView::of);
            Json(view).into_response()
        }
        None => (StatusCode::NOT_FOUND, format!("no profile for {id:?}\n")).into_response(),
    }
}

fn unavailable(why: String) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(axum::http::header::RETRY_AFTER, "1".to_owned())],
        format!("{why}\n"),
    )
        .into_response()
}
