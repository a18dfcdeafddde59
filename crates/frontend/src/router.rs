//! The router: path to endpoint, `404`/`405`, the paths the server answers itself, and which of
//! them a listener serves (its [`Role`]).

use super::app::App;
use super::{admission, metrics, status, Step};
use common::handler::text_response;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, ALLOW, CONNECTION, HOST, TRANSFER_ENCODING};
use hyper::{Method, Request, StatusCode, Version};
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
    if let Some(refused) = framing_error(&req) {
        return Step::Now(Ok(refused));
    }
    let path = req.uri().path();
    let own = OwnPath::of(path);
    if own.is_some() && !role.serves_own_paths() || own.is_none() && !role.serves_endpoints() {
        return Step::Now(Ok(not_here()));
    }
    if let Some(own) = own {
        if let Some(guard) = app.with_table(|t| t.admin_guard.clone()) {
            if !guard.allows(req.headers()) {
                app.count_unauthorized();
                return Step::Now(Ok(guard.unauthorized()));
            }
        }
        return Step::Now(Ok(match *req.method() {
            Method::GET | Method::HEAD => match own {
                OwnPath::Status => status::render(app),
                OwnPath::Metrics => metrics::render(app, req.headers()),
                OwnPath::Healthz => text_response(StatusCode::OK, "ok"),
                OwnPath::Readyz => {
                    let verdict = app.readiness();
                    let status = if verdict.ready {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    if verdict.reason == crate::app::HANDLER_NOT_READY {
                        let detail = app.unready_handlers().join("; ");
                        text_response(status, &format!("{}: {detail}", verdict.reason))
                    } else {
                        text_response(status, verdict.reason)
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
        // Credentials before anything else: a request without them learns nothing more about
        // the endpoint and never takes a queue slot.
        let denied = route
            .0
            .guard
            .as_ref()
            .filter(|guard| req.as_ref().is_some_and(|r| !guard.allows(r.headers())));
        if let Some(guard) = denied {
            app.count_unauthorized();
            return Step::Now(Ok(guard.unauthorized()));
        }
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

/// RFC 9112 rules hyper leaves to the application, checked before routing and admission: an
/// HTTP/1.1 request needs exactly one `Host` (HTTP/2 carries `:authority` instead, HTTP/1.0 may
/// omit it; two are refused in any version), `400` otherwise; `Transfer-Encoding` must be exactly
/// one `chunked` (hyper decodes a final `chunked` and hands on the request with the other codings
/// undone): another coding gets `501`, `chunked` twice `400`. The common request costs two header
/// lookups and no allocation. The answer closes the connection.
fn framing_error<B>(req: &Request<B>) -> Option<hyper::Response<super::Body>> {
    let headers = req.headers();
    let mut hosts = headers.get_all(HOST).iter();
    let (status, why) = match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => (StatusCode::BAD_REQUEST, "more than one Host header"),
        (None, _) if req.version() == Version::HTTP_11 => (
            StatusCode::BAD_REQUEST,
            "an HTTP/1.1 request needs a Host header",
        ),
        _ if headers.contains_key(TRANSFER_ENCODING) => transfer_coding_error(headers)?,
        _ => return None,
    };
    let mut resp = text_response(status, why);
    if req.version() < Version::HTTP_2 {
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    Some(resp)
}

/// The refusal of a `Transfer-Encoding` other than exactly one `chunked`, if it is one.
fn transfer_coding_error(headers: &HeaderMap) -> Option<(StatusCode, &'static str)> {
    let mut chunked = 0;
    for value in headers.get_all(TRANSFER_ENCODING) {
        let Ok(value) = value.to_str() else {
            return Some((StatusCode::BAD_REQUEST, "unreadable Transfer-Encoding"));
        };
        for coding in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if !coding.eq_ignore_ascii_case("chunked") {
                return Some((
                    StatusCode::NOT_IMPLEMENTED,
                    "only the chunked transfer coding is implemented",
                ));
            }
            chunked += 1;
        }
    }
    (chunked != 1).then_some((
        StatusCode::BAD_REQUEST,
        "Transfer-Encoding must be exactly one chunked",
    ))
}

fn method_not_allowed(allow: HeaderValue) -> hyper::Response<super::Body> {
    let mut resp = text_response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here");
    resp.headers_mut().insert(ALLOW, allow);
    resp
}

/// `404` for a path this listener does not serve.
pub(super) fn not_here() -> hyper::Response<super::Body> {
    text_response(StatusCode::NOT_FOUND, "no endpoint at this path")
}
