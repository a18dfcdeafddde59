//! One connection's service: which paths its listener serves, the access log, and the cap on
//! requests per HTTP/1 connection.

use super::access::AccessLine;
use super::app::App;
use super::router::route;
use super::{to_body, Answer};
use crate::handler::text_response;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION};
use hyper::service::service_fn;
use hyper::{Request, StatusCode};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// The hyper service for one connection.
pub(super) fn service(
    app: Arc<App>,
    role: Role,
    remote: SocketAddr,
    local: SocketAddr,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = hyper::Response<super::Body>,
    Error = super::Ignored,
    Future = impl std::future::Future<Output = Answer> + Send,
> + Clone
       + Send
       + 'static {
    let served = Arc::new(AtomicUsize::new(0));
    let max_requests = app.server.max_requests_per_connection.get();
    service_fn(move |req: Request<Incoming>| {
        let app = app.clone();
        let served = served.clone();
        async move {
            let logged = app.server.access_log.then(|| AccessLine::of(&req, remote));
            // HTTP/1 only: an HTTP/2 connection multiplexes and has no `Connection` header.
            let last = req.version() < hyper::Version::HTTP_2
                && served.fetch_add(1, Ordering::Relaxed) + 1 >= max_requests;
            let mut answer: Answer = route(app.clone(), role, req, remote, local).await;
            if let (Some(line), Ok(resp)) = (logged, answer.as_ref()) {
                line.write(&app, resp);
            }
            if last {
                if let Ok(resp) = answer.as_mut() {
                    resp.headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
            }
            answer
        }
    })
}

/// `404` for a path this listener does not serve.
pub(super) fn not_here() -> hyper::Response<super::Body> {
    to_body(text_response(
        StatusCode::NOT_FOUND,
        "no endpoint at this path",
    ))
}
