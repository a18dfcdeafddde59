//! The router: path to endpoint, `404`/`405`, and the paths the server answers itself.

use super::{admission, metrics, status, to_body, Answer};
use crate::config::ServerConfig;
use crate::endpoint::Endpoint;
use crate::handler::text_response;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use hyper::{Method, Request, StatusCode};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Everything the front end serves: the endpoints, by path.
#[derive(Debug)]
pub struct App {
    /// Server-wide settings.
    pub server: ServerConfig,
    endpoints: Vec<Arc<Endpoint>>,
    routes: HashMap<String, usize>,
    allow: Vec<HeaderValue>,
    started: Instant,
    open_connections: AtomicUsize,
}

impl App {
    /// An app serving `endpoints`, which must have distinct paths (the config guarantees it).
    pub fn new(server: ServerConfig, endpoints: Vec<Arc<Endpoint>>) -> App {
        let routes = endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| (e.config.path.clone(), i))
            .collect();
        let allow = endpoints
            .iter()
            .map(|e| {
                let list: Vec<&str> = e.config.methods.iter().map(|m| m.as_str()).collect();
                HeaderValue::from_str(&list.join(", "))
                    .unwrap_or_else(|_| HeaderValue::from_static("GET"))
            })
            .collect();
        App {
            server,
            endpoints,
            routes,
            allow,
            started: Instant::now(),
            open_connections: AtomicUsize::new(0),
        }
    }

    /// The endpoints, in config order.
    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }

    /// Time since the app was built.
    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.open_connections.load(Ordering::Relaxed)
    }

    pub(super) fn connection_opened(&self) {
        self.open_connections.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn connection_closed(&self) {
        self.open_connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// The traffic light as a number (0 green, 1 yellow, 2 red), if the server runs one.
    pub fn light_level(&self) -> Option<i64> {
        None
    }

    /// The traffic light's name, or `-` if the server runs none.
    pub fn light_name(&self) -> &'static str {
        "-"
    }

    /// The mode of the endpoint at `path`, or `-` for the server's own paths and unknown ones.
    pub fn mode_of(&self, path: &str) -> &'static str {
        self.routes
            .get(path)
            .and_then(|&i| self.endpoints.get(i))
            .map_or("-", |e| e.mode())
    }

    /// Stop admitting on every endpoint (shutdown).
    pub fn close(&self) {
        for ep in &self.endpoints {
            ep.close();
        }
    }

    /// True once every endpoint's dispatcher has drained and stopped.
    pub fn stopped(&self) -> bool {
        self.endpoints.iter().all(|e| e.is_stopped())
    }
}

/// Paths the server answers itself (see [`crate::config::RESERVED_PATHS`]).
#[derive(Debug, Clone, Copy)]
enum OwnPath {
    Status,
    Metrics,
    Healthz,
}

impl OwnPath {
    fn of(path: &str) -> Option<OwnPath> {
        match path {
            "/status" => Some(OwnPath::Status),
            "/metrics" => Some(OwnPath::Metrics),
            "/healthz" => Some(OwnPath::Healthz),
            _ => None,
        }
    }
}

/// Answer one request.
pub(super) async fn route(
    app: Arc<App>,
    req: Request<Incoming>,
    remote: SocketAddr,
    local: SocketAddr,
) -> Answer {
    // hyper lets Transfer-Encoding win over Content-Length (RFC 9112 6.3) and closes afterwards;
    // a message carrying both is a smuggling attempt through some proxy, so refuse it outright.
    if req.headers().contains_key(TRANSFER_ENCODING) && req.headers().contains_key(CONTENT_LENGTH) {
        let mut resp = to_body(text_response(
            StatusCode::BAD_REQUEST,
            "both Content-Length and Transfer-Encoding: refused",
        ));
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        return Ok(resp);
    }
    let path = req.uri().path();
    if let Some(own) = OwnPath::of(path) {
        return Ok(match *req.method() {
            Method::GET | Method::HEAD => match own {
                OwnPath::Status => status::render(&app),
                OwnPath::Metrics => metrics::render(&app),
                OwnPath::Healthz => to_body(text_response(StatusCode::OK, "ok")),
            },
            _ => method_not_allowed(HeaderValue::from_static("GET, HEAD")),
        });
    }
    let Some(&index) = app.routes.get(path) else {
        return Ok(to_body(text_response(
            StatusCode::NOT_FOUND,
            "no endpoint at this path",
        )));
    };
    let (endpoint, allow) = match (app.endpoints.get(index), app.allow.get(index)) {
        (Some(e), Some(a)) => (e.clone(), a),
        _ => {
            return Ok(to_body(text_response(
                StatusCode::NOT_FOUND,
                "no endpoint at this path",
            )))
        }
    };
    if !endpoint.config.methods.contains(req.method()) {
        return Ok(method_not_allowed(allow.clone()));
    }
    admission::admit(&endpoint, app.server.body_read_timeout, req, remote, local).await
}

fn method_not_allowed(allow: HeaderValue) -> hyper::Response<super::Body> {
    let mut resp = to_body(text_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed here",
    ));
    resp.headers_mut().insert(ALLOW, allow);
    resp
}
