//! The router: path to endpoint, `404`/`405`, the paths the server answers itself, and which of
//! them a listener serves (its [`Role`]).

use super::app::{App, Route};
use super::{admission, metrics, status, Step};
use common::handler::text_response;
use hyper::body::Incoming;
use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, ALLOW, CONNECTION, HOST, TRANSFER_ENCODING,
};
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
/// The request is taken out of `req` only if it is admitted (an empty `req` is answered `404`):
/// borrowed from the caller's option rather than moved in, it is copied once less.
pub(super) fn route(
    app: &Arc<App>,
    role: Role,
    req: &mut Option<Request<Incoming>>,
    remote: SocketAddr,
    local: SocketAddr,
) -> Step {
    let Some(head) = req.as_ref() else {
        return Step::Now(Ok(not_here()));
    };
    if let Some(refused) = framing_error(head) {
        return Step::Now(Ok(refused));
    }
    // hyper keeps the head limit only while its buffers are no larger than the limit.
    if app.server.io_buffer_bytes > app.server.max_header_bytes
        && head.version() < Version::HTTP_2
        && head_size(head) > app.server.max_header_bytes
    {
        let mut resp = text_response(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request head larger than max_header_bytes",
        );
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        return Step::Now(Ok(resp));
    }
    let path = head.uri().path();
    let own = OwnPath::of(path);
    if own.is_some() && !role.serves_own_paths() || own.is_none() && !role.serves_endpoints() {
        return Step::Now(Ok(not_here()));
    }
    if let Some(own) = own {
        if let Some(guard) = app.with_table(|t| t.admin_guard.clone()) {
            if !guard.allows(head.headers()) {
                app.count_unauthorized();
                return Step::Now(Ok(guard.unauthorized()));
            }
        }
        return Step::Now(Ok(match *head.method() {
            Method::GET | Method::HEAD => match own {
                OwnPath::Status => status::render(app),
                OwnPath::Metrics => metrics::render(app, head.headers()),
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
    route_endpoint(app, req, remote, local, 0)
}

/// Route a request again whose endpoint refused it because a reload retired it since the
/// request was routed (see [`admission::admit`]); `reroutes` counts the times.
pub(super) fn reroute(
    app: &Arc<App>,
    req: Request<Incoming>,
    remote: SocketAddr,
    local: SocketAddr,
    reroutes: u8,
) -> Step {
    route_endpoint(app, &mut Some(req), remote, local, reroutes)
}

/// Route `req` to its endpoint in the current table and admit it there.
fn route_endpoint(
    app: &Arc<App>,
    req: &mut Option<Request<Incoming>>,
    remote: SocketAddr,
    local: SocketAddr,
    reroutes: u8,
) -> Step {
    // The closure borrows the request rather than taking it: a request is a few hundred bytes,
    // and moving it into the closure and on would copy it on every request.
    app.with_table(|table| {
        let Some((r, route)) = req
            .as_ref()
            .and_then(|r| Some((r, table.find(r.uri().path())?)))
        else {
            return Step::Now(Ok(not_here()));
        };
        if let Some(refused) = refusal(app, route, r.method(), r.headers()) {
            return Step::Now(Ok(refused));
        }
        // Taken out of the option straight into the call: matching it in a tuple with the route
        // would copy the request twice.
        match req.take() {
            Some(req) => admission::admit(app, &route.endpoint, req, (remote, local), reroutes),
            None => Step::Now(Ok(not_here())),
        }
    })
}

/// The answer of an endpoint's `route` to a request with this method and headers that it does
/// not take: `401` without its credentials (checked first: such a request learns nothing more
/// about the endpoint and never takes a queue slot), `405` for a method it does not serve.
// Always inlined: called as a function, it cost every routed request about 30 instructions more
// (benches/ping_instructions.sh, jellyfish and proxy against the build before it).
#[inline(always)]
pub(super) fn refusal(
    app: &App,
    route: &Route,
    method: &Method,
    headers: &HeaderMap,
) -> Option<hyper::Response<super::Body>> {
    if let Some(guard) = route.guard.as_ref().filter(|g| !g.allows(headers)) {
        app.count_unauthorized();
        return Some(guard.unauthorized());
    }
    if !route.endpoint.config.methods.contains(method) {
        return Some(method_not_allowed(route.allow.clone()));
    }
    None
}

/// RFC 9112 rules hyper leaves to the application, checked before routing and admission: an
/// HTTP/1.1 request needs exactly one `Host` (HTTP/2 carries `:authority` instead, HTTP/1.0 may
/// omit it; two are refused in any version), `400` otherwise; `Transfer-Encoding` must be exactly
/// one `chunked` (hyper decodes a final `chunked` and hands on the request with the other codings
/// undone): another coding gets `501`, `chunked` twice `400`. The common request costs one pass
/// over its few headers (see [`SCAN_MAX`]) and no allocation. The answer closes the connection.
fn framing_error<B>(req: &Request<B>) -> Option<hyper::Response<super::Body>> {
    let headers = req.headers();
    let (hosts, coded) = framing_fields(headers);
    let (status, why) = match hosts {
        2.. => (StatusCode::BAD_REQUEST, "more than one Host header"),
        0 if req.version() == Version::HTTP_11 => (
            StatusCode::BAD_REQUEST,
            "an HTTP/1.1 request needs a Host header",
        ),
        _ if coded => transfer_coding_error(headers)?,
        _ => return None,
    };
    let mut resp = text_response(status, why);
    if req.version() < Version::HTTP_2 {
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    Some(resp)
}

/// The size of `req`'s HTTP/1 head as sent, without optional whitespace: the request line, each
/// field as `name: value` with its line end, and the blank line.
fn head_size<B>(req: &Request<B>) -> usize {
    let target = req.uri().path_and_query().map_or(1, |pq| pq.as_str().len());
    let line = req.method().as_str().len() + 1 + target + 1 + "HTTP/1.1\r\n".len();
    let fields: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + 2 + value.len() + 2)
        .sum();
    line + fields + 2
}

/// Header maps of at most this many fields are searched by one pass over their fields rather than
/// by hashed lookups: a request has a handful (`curl` and `wrk` send one to three), and comparing
/// a standard header's name is one byte, cheaper than hashing it.
pub(super) const SCAN_MAX: usize = 8;

/// The number of `Host` fields (2 for two or more) and whether there is a `Transfer-Encoding`.
fn framing_fields(headers: &HeaderMap) -> (u8, bool) {
    if headers.len() > SCAN_MAX {
        let mut hosts = headers.get_all(HOST).iter();
        let hosts = match (hosts.next(), hosts.next()) {
            (None, _) => 0,
            (Some(_), None) => 1,
            (Some(_), Some(_)) => 2,
        };
        return (hosts, headers.contains_key(TRANSFER_ENCODING));
    }
    let (mut hosts, mut coded) = (0u8, false);
    for (name, _) in headers {
        if *name == HOST {
            hosts = hosts.saturating_add(1).min(2);
        } else if *name == TRANSFER_ENCODING {
            coded = true;
        }
    }
    (hosts, coded)
}

/// The first value of the field `name`, found as [`framing_fields`] finds its fields.
pub(super) fn first_value<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> Option<&'a HeaderValue> {
    if headers.len() > SCAN_MAX {
        return headers.get(name);
    }
    headers
        .iter()
        .find_map(|(field, value)| (field == name).then_some(value))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(fields: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in fields {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn a_pass_over_few_fields_and_lookups_in_many_find_the_same() {
        let filler = [("x-a", "1"), ("x-b", "2"), ("x-c", "3"), ("x-d", "4")];
        for extra in [
            &filler[..0],
            &filler[..],
            &[filler, filler, filler].concat()[..],
        ] {
            let mut fields = extra.to_vec();
            fields.extend([("host", "a"), ("connection", "close"), ("connection", "x")]);
            let one = headers(&fields);
            assert_eq!(framing_fields(&one), (1, false));
            assert_eq!(
                first_value(&one, &CONNECTION).map(|v| v.as_bytes()),
                Some(&b"close"[..])
            );
            fields.extend([("host", "b"), ("host", "c"), ("transfer-encoding", "gzip")]);
            let many = headers(&fields);
            assert_eq!(framing_fields(&many), (2, true));
            assert_eq!(
                first_value(&many, &TRANSFER_ENCODING).map(|v| v.as_bytes()),
                Some(&b"gzip"[..])
            );
            let none = headers(extra);
            assert_eq!(framing_fields(&none), (0, false));
            assert_eq!(first_value(&none, &CONNECTION), None);
        }
    }
}
