//! `GET /status`: counters, queue depth and busy state as JSON, answered by the front end itself.

use super::app::App;
use super::Body;
use common::endpoint::EndpointStatus;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use std::collections::BTreeMap;

/// The `/status` JSON document.
#[derive(serde::Serialize)]
struct StatusDocument<'a> {
    version: &'static str,
    uptime_ms: u64,
    connections: ConnectionCounts,
    children: usize,
    light: light::LightStatus,
    /// Endpoints a config reload replaced that still run jobs they had admitted.
    draining_endpoints: usize,
    /// The public listener's door: times closed, total closed time.
    door: crate::door::DoorSnapshot,
    /// HTTP/1 connections held unread after an ignored overflow: total, now, ended early.
    overflow_hold: crate::hold::HoldSnapshot,
    endpoints: BTreeMap<&'a str, EndpointStatus>,
}

/// Open connections against the main listener's limit, and the answers they have not taken yet.
#[derive(serde::Serialize)]
struct ConnectionCounts {
    open: usize,
    max: usize,
    /// Response bytes made and not yet taken by their connections.
    unsent_bytes: u64,
    /// Requests and answers refused `503` for a connection over an unsent-bytes budget.
    unsent_refused: u64,
}

/// The status document. Reads atomics only: never waits behind work.
pub(super) fn render(app: &App) -> Response<Body> {
    let endpoints = app.endpoints();
    let status = StatusDocument {
        version: env!("CARGO_PKG_VERSION"),
        uptime_ms: app.uptime().as_millis() as u64,
        connections: ConnectionCounts {
            open: app.open_connections(),
            max: app.server.max_connections.get(),
            unsent_bytes: app.unsent_bytes(),
            unsent_refused: app.unsent_refused(),
        },
        children: app.children().live(),
        light: app.light().snapshot(),
        draining_endpoints: app.draining(),
        door: app.door().snapshot(),
        overflow_hold: app.hold().snapshot(),
        endpoints: endpoints
            .iter()
            .map(|e| (e.config.path.as_str(), e.status()))
            .collect(),
    };
    let (code, body) = match serde_json::to_vec_pretty(&status) {
        Ok(mut json) => {
            json.push(b'\n');
            (StatusCode::OK, json)
        }
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{{\"error\":\"{e}\"}}\n").into_bytes(),
        ),
    };
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = code;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
