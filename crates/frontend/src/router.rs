//! The router: path to endpoint, `404`/`405`, the paths the server answers itself, and which of
//! them a listener serves (its [`Role`]).

use super::app::App;
use super::{admission, metrics, status, to_body, Step};
use common::handler::text_response;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW};
use hyper::{Method, Request, StatusCode};
use std::net::SocketAddr;
use std::sync::Arc;

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The endpoints and the server's own paths (no admin listener configured).
    PublicAndAdmin,
    /// The endpoints only; the server's own paths are on the admin listener.
    Public,
    /// The server's own paths only: `/status`, `/metrics`, `/healthz`, `/readyz`.
    Admin,
    /// Plain HTTP redirecting everything to HTTPS on this port (`308 Permanent Redirect`).
    Redirect(u16),
}

impl Role {
    /// True if this listener answers the server's own paths.
    pub fn serves_own_paths(self) -> bool {
        matches!(self, Role::PublicAndAdmin | Role::Admin)
    }

    /// True if this listener serves the endpoints.
    pub fn serves_endpoints(self) -> bool {
        matches!(self, Role::PublicAndAdmin | Role::Public)
    }
}

/// Paths the server answers itself (see [`config::RESERVED_PATHS`]).
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

/// Answer one request: synchronously, except for the slow paths of admission (see [`Step`]).
pub(super) fn route(
    app: &Arc<App>,
    role: Role,
    req: Request<Incoming>,
    remote: SocketAddr,
    local: SocketAddr,
) -> Step {
    let path = req.uri().path();
    let own = OwnPath::of(path);
    if own.is_some() && !role.serves_own_paths() || own.is_none() && !role.serves_endpoints() {
        return Step::Now(Ok(not_here()));
    }
    if let Some(own) = own {
        return Step::Now(Ok(match *req.method() {
            Method::GET | Method::HEAD => match own {
                OwnPath::Status => status::render(app),
                OwnPath::Metrics => metrics::render(app),
                OwnPath::Healthz => to_body(text_response(StatusCode::OK, "ok")),
                OwnPath::Readyz => {
                    let verdict = app.readiness();
                    let status = if verdict.ready {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    if verdict.reason == crate::app::HANDLER_NOT_READY {
                        let detail = app.unready_handlers().join("; ");
                        to_body(text_response(
                            status,
                            &format!("{}: {detail}", verdict.reason),
                        ))
                    } else {
                        to_body(text_response(status, verdict.reason))
                    }
                }
            },
            _ => method_not_allowed(HeaderValue::from_static("GET, HEAD")),
        }));
    }
    // The closure borrows the request rather than taking it: a request is a few hundred bytes,
    // and moving it into the closure and on would copy it on every request.
    let mut req = Some(req);
    app.with_table(|table| {
        let Some(route) = req.as_ref().and_then(|r| {
            let route = table.find(r.uri().path())?;
            Some((route, route.endpoint.config.methods.contains(r.method())))
        }) else {
            return Step::Now(Ok(not_here()));
        };
        match (route, req.take()) {
            ((route, true), Some(req)) => admission::admit(
                &route.endpoint,
                app.server.body_read_timeout,
                app.server.access_log,
                req,
                remote,
                local,
            ),
            ((route, _), _) => Step::Now(Ok(method_not_allowed(route.allow.clone()))),
        }
    })
}

fn method_not_allowed(allow: HeaderValue) -> hyper::Response<super::Body> {
    let mut resp = to_body(text_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed here",
    ));
    resp.headers_mut().insert(ALLOW, allow);
    resp
}

/// `404` for a path this listener does not serve.
pub(super) fn not_here() -> hyper::Response<super::Body> {
    to_body(text_response(
        StatusCode::NOT_FOUND,
        "no endpoint at this path",
    ))
}
