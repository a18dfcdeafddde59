//! The router: path to endpoint, `404`/`405`, and the paths the server answers itself.

use super::app::App;
use super::connection::{not_here, Role};
use super::{admission, metrics, status, to_body, Answer};
use crate::handler::text_response;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW};
use hyper::{Method, Request, StatusCode};
use std::net::SocketAddr;
use std::sync::Arc;

/// Paths the server answers itself (see [`crate::config::RESERVED_PATHS`]).
#[derive(Debug, Clone, Copy)]
enum OwnPath {
    Status,
    Metrics,
    Healthz,
    Readyz,
}

impl OwnPath {
    fn of(path: &str) -> Option<OwnPath> {
        match path {
            "/status" => Some(OwnPath::Status),
            "/metrics" => Some(OwnPath::Metrics),
            "/healthz" => Some(OwnPath::Healthz),
            "/readyz" => Some(OwnPath::Readyz),
            _ => None,
        }
    }
}

/// Answer one request.
pub(super) async fn route(
    app: Arc<App>,
    role: Role,
    req: Request<Incoming>,
    remote: SocketAddr,
    local: SocketAddr,
) -> Answer {
    let path = req.uri().path();
    let own = OwnPath::of(path);
    if own.is_some() && !role.serves_own_paths() || own.is_none() && !role.serves_endpoints() {
        return Ok(not_here());
    }
    if let Some(own) = own {
        return Ok(match *req.method() {
            Method::GET | Method::HEAD => match own {
                OwnPath::Status => status::render(&app),
                OwnPath::Metrics => metrics::render(&app),
                OwnPath::Healthz => to_body(text_response(StatusCode::OK, "ok")),
                OwnPath::Readyz => {
                    let verdict = app.readiness();
                    let status = if verdict.ready {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    to_body(text_response(status, verdict.reason))
                }
            },
            _ => method_not_allowed(HeaderValue::from_static("GET, HEAD")),
        });
    }
    let Some(endpoint) = app.endpoint(path) else {
        return Ok(to_body(text_response(
            StatusCode::NOT_FOUND,
            "no endpoint at this path",
        )));
    };
    if !endpoint.config.methods.contains(req.method()) {
        let allow = app
            .allow(path)
            .unwrap_or_else(|| HeaderValue::from_static("GET"));
        return Ok(method_not_allowed(allow));
    }
    admission::admit(
        &endpoint,
        app.server.body_read_timeout,
        app.server.access_log,
        req,
        remote,
        local,
    )
    .await
}

fn method_not_allowed(allow: HeaderValue) -> hyper::Response<super::Body> {
    let mut resp = to_body(text_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed here",
    ));
    resp.headers_mut().insert(ALLOW, allow);
    resp
}
