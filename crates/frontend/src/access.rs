//! The access log: one structured line per answered request, never for ignored overflow.

use super::app::App;
use std::time::{Duration, Instant};

/// What the access log needs from a request, taken before the request is consumed.
pub(super) struct AccessLine {
    started: Instant,
    client: std::net::SocketAddr,
    method: hyper::Method,
    uri: hyper::Uri,
    user_agent: Option<hyper::header::HeaderValue>,
}

impl AccessLine {
    pub(super) fn of<B>(req: &hyper::Request<B>, client: std::net::SocketAddr) -> AccessLine {
        AccessLine {
            started: Instant::now(),
            client,
            method: req.method().clone(),
            uri: req.uri().clone(),
            user_agent: req.headers().get(hyper::header::USER_AGENT).cloned(),
        }
    }

    /// One structured line per answered request (ignored overflow never gets here).
    pub(super) fn write(self, app: &App, resp: &hyper::Response<super::Body>) {
        use hyper::body::Body as _;
        let timing = resp
            .extensions()
            .get::<common::job::JobTiming>()
            .copied()
            .unwrap_or_default();
        let path = self.uri.path();
        // The query as sent, or with the values `access_log_redact_query` names hidden; no
        // request header but the user agent is logged (so never `Authorization`).
        let query = self
            .uri
            .query()
            .map(|q| app.server.access_log_redact_query.apply(q));
        let user_agent = self.user_agent.as_ref().and_then(|v| v.to_str().ok());
        tracing::info!(
            target: "fiddler_crab::access",
            client = %self.client,
            method = %self.method,
            path,
            query,
            user_agent,
            status = resp.status().as_u16(),
            bytes = resp.body().size_hint().exact().unwrap_or(0),
            queue_wait_ms = ms(timing.queue_wait),
            run_ms = ms(timing.run),
            total_ms = ms(self.started.elapsed()),
            mode = app.mode_of(path),
            light = app.light_name(),
        );
    }
}

/// Milliseconds with microsecond precision, for log fields.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}
