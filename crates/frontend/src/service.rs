//! One connection's hyper service: the router behind it, the access log, HSTS, the redirect
//! listener's answer, the cap on requests per HTTP/1 connection, and the budgets of unsent
//! answers.

use super::access::{AccessLine, ClientText};
use super::app::App;
use super::connections::{Activity, InFlight, Unanswered};
use super::router::{first_value, route, Role};
use super::unsent::{Ledger, Sent};
use super::{Answer, Reply, Sending, Step};
use common::handler::text_response;
use common::job::JobTiming;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, HOST, LOCATION, STRICT_TRANSPORT_SECURITY};
use hyper::service::service_fn;
use hyper::{Request, StatusCode};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The hyper service for one connection. A request whose answer is decided at once (nearly
/// everything but a body to read or a queued job to wait for) is answered without building an
/// `async` state machine; see [`super::Step`].
pub(super) fn for_connection(
    app: Arc<App>,
    role: Role,
    remote: SocketAddr,
    local: SocketAddr,
    hsts: Option<HeaderValue>,
    activity: Arc<Activity>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = hyper::Response<Sent>,
    Error = super::Ignored,
    Future = Reply,
> + Clone
       + Send
       + 'static {
    let max_requests = app.server.max_requests_per_connection.get();
    // The client's address as access lines write it: formatted once per connection.
    let client = app.server.access_log.then(|| ClientText::of(remote));
    service_fn(move |req: Request<Incoming>| {
        activity.saw(req.version());
        activity.last_request(is_last_bodiless(&req));
        let finish = Finish {
            logged: client.as_ref().map(|client| AccessLine::of(&req, client)),
            // HTTP/1 only: an HTTP/2 connection multiplexes and has no `Connection` header.
            last: req.version() < hyper::Version::HTTP_2 && activity.request() >= max_requests,
            hsts: hsts.clone(),
        };
        let ledger = app.unsent();
        let step = match role {
            Role::Redirect(port) => Step::Now(Ok(redirect(&req, port))),
            _ => match ledger.refuse_request(&activity) {
                Some(refusal) => Step::Now(Ok(refusal)),
                // In an option the router takes it out of only when it is admitted (see
                // `route`): one copy of the request less than passing it by value.
                None => route(&app, role, &mut Some(req), remote, local),
            },
        };
        let (mut answer, timing) = match step {
            Step::Now(answer) => (answer, None),
            Step::Inline(answer, timing) => (answer, timing),
            Step::Later(pending) => {
                let Finish { logged, last, hsts } = finish;
                return Reply::waiting(Waiting {
                    pending,
                    after: Some(After {
                        logged: logged.map(Box::new),
                        last,
                        hsts,
                        in_flight: InFlight::new(&activity),
                        unanswered: Unanswered::new(&activity),
                        app: app.clone(),
                        activity: activity.clone(),
                    }),
                });
            }
        };
        activity.answered_at_once();
        if let Ok(resp) = answer.as_mut() {
            ledger.admit(&activity, resp);
        }
        // Most answers need no finishing: then the answer is not moved through `apply`.
        let answer = if finish.is_nothing() {
            answer
        } else {
            finish.apply(&app, answer, timing)
        };
        Reply::now(sending(answer, &activity, ledger))
    })
}

/// An answer that comes later (a body to read, a queued job, an asynchronous run) and what is
/// done with it then. Not an `async` block: that would be boxed once more per request, around a
/// pending answer that is a box or a few words already.
pub(super) struct Waiting {
    pending: super::Pending,
    /// Taken when the answer comes.
    after: Option<After>,
}

/// What a [`Waiting`] answer needs once it has come: the [`Finish`], its access line boxed (the
/// line is most of its size, and every answer, the ones at once too, is moved as a [`Reply`] of
/// the largest kind's size). Dropped unanswered (the client went), the request stops being in
/// flight and awaited.
struct After {
    logged: Option<Box<AccessLine>>,
    last: bool,
    hsts: Option<HeaderValue>,
    in_flight: InFlight,
    unanswered: Unanswered,
    app: Arc<App>,
    activity: Arc<Activity>,
}

impl std::future::Future for Waiting {
    type Output = Sending;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Sending> {
        let answer = match std::pin::Pin::new(&mut self.pending).poll(cx) {
            std::task::Poll::Ready(answer) => answer,
            std::task::Poll::Pending => return std::task::Poll::Pending,
        };
        match self.after.take() {
            Some(after) => std::task::Poll::Ready(after.answered(answer)),
            // Polled again after its answer (hyper never does): nothing more to say.
            None => std::task::Poll::Ready(Err(super::Ignored)),
        }
    }
}

impl After {
    /// The later `answer` finished and counted, as sent.
    fn answered(self, mut answer: Answer) -> Sending {
        let After {
            logged,
            last,
            hsts,
            in_flight,
            unanswered,
            app,
            activity,
        } = self;
        drop(unanswered);
        let finish = Finish {
            logged: logged.map(|line| *line),
            last,
            hsts,
        };
        if let Ok(resp) = answer.as_mut() {
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS && resp.body().is_stream() {
                let answer = finish
                    .apply(&app, answer, None)
                    .map(|resp| upgrade_session(&app, &activity, resp, in_flight));
                return sending(answer, &activity, app.unsent());
            }
        }
        match answer.as_mut() {
            // A streamed answer is in flight until its stream ends: the idle sweep leaves its
            // connection alone while the producer pauses between chunks (the producer's own idle
            // timeout bounds that).
            Ok(resp) if resp.body().is_stream() => resp
                .body_mut()
                .on_stream_end(Box::new(move |_| drop(in_flight))),
            _ => drop(in_flight),
        }
        let ledger = app.unsent();
        if let Ok(resp) = answer.as_mut() {
            ledger.admit(&activity, resp);
        }
        let answer = finish.apply(&app, answer, None);
        sending(answer, &activity, ledger)
    }
}

/// True for an HTTP/1 request with no body that asks to close the connection after its answer:
/// `Connection: close`, or HTTP/1.0 without `Connection: keep-alive` (RFC 9112, 9.3 and 9.6).
/// Its client sends nothing after it, so the close needs no linger. A request that also asks for
/// an upgrade is not one (and a `101` clears the mark: see [`Activity::hold_session`]).
///
/// One header lookup per HTTP/1 request (a pass over a few fields); only the first `Connection`
/// field is read (a second one is rare, and the worst a misread can do is a linger hyper's own
/// reading makes unneeded, or a quiet close of a connection hyper keeps open, which the next
/// request marks again).
fn is_last_bodiless<B: hyper::body::Body>(req: &Request<B>) -> bool {
    let version = req.version();
    if version >= hyper::Version::HTTP_2 || !req.body().is_end_stream() {
        return false;
    }
    let (mut close, mut keep_alive) = (false, false);
    if let Some(value) = first_value(req.headers(), &CONNECTION) {
        for token in value.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            if token.eq_ignore_ascii_case(b"upgrade") {
                return false;
            }
            close |= token.eq_ignore_ascii_case(b"close");
            keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
        }
    }
    if version == hyper::Version::HTTP_11 {
        close
    } else {
        // HTTP/1.0 (or 0.9): closed after the answer unless the client asks to keep it.
        !keep_alive
    }
}

/// How often a passed-through upgrade session looks whether the server is shutting down.
const SESSION_POLL: Duration = Duration::from_millis(100);

/// A `101` answer whose streamed body is an upgrade session (an upstream endpoint's WebSocket):
/// the head goes out with no body, and the session's body, whose producer holds the job's running
/// slot while it splices the two upgraded connections, is driven by a task until it ends. The
/// connection keeps its slot (see [`Activity::hold_session`]) and the request stays in flight
/// until then; at shutdown the task lets go of the body, which ends the session.
fn upgrade_session(
    app: &Arc<App>,
    activity: &Activity,
    mut resp: hyper::Response<super::Body>,
    in_flight: InFlight,
) -> hyper::Response<super::Body> {
    let mut body = std::mem::take(resp.body_mut());
    let (ended, session) = tokio::sync::oneshot::channel::<()>();
    activity.hold_session(session);
    let app = app.clone();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(SESSION_POLL);
        loop {
            tokio::select! {
                frame = body.frame() => match frame {
                    Some(Ok(_)) => {}
                    None | Some(Err(_)) => break,
                },
                _ = ticks.tick() => if app.closing() {
                    tracing::debug!("shutting down: upgrade session closed");
                    break;
                },
            }
        }
        drop(body);
        drop(in_flight);
        drop(ended);
    });
    resp
}

/// The answer with its body as hyper sends it: large and streamed bodies counted as unsent
/// until hyper takes them (see [`crate::unsent`]).
fn sending(answer: Answer, activity: &Arc<Activity>, ledger: &Arc<Ledger>) -> Sending {
    answer.map(|resp| resp.map(|body| Sent::new(body, activity, ledger)))
}

/// What is done to every answer before it is sent: the access log line, HSTS, and
/// `Connection: close` on the last request a connection may make.
struct Finish {
    // Not boxed: an allocation per logged request costs more than moving the line's bytes.
    logged: Option<AccessLine>,
    last: bool,
    hsts: Option<HeaderValue>,
}

impl Finish {
    /// True if [`Finish::apply`] would leave the answer as it is.
    fn is_nothing(&self) -> bool {
        self.logged.is_none() && !self.last && self.hsts.is_none()
    }

    /// Finish `answer`; `timing` is an inline answer's (others carry theirs in the extensions).
    fn apply(self, app: &Arc<App>, mut answer: Answer, timing: Option<JobTiming>) -> Answer {
        if let Ok(resp) = answer.as_mut() {
            if let Some(line) = self.logged {
                if resp.body().is_stream() {
                    // Logged when the stream ends, with the bytes sent and whether it completed.
                    let app = app.clone();
                    let status = resp.status();
                    let timing = timing.or_else(|| resp.extensions().get::<JobTiming>().copied());
                    resp.body_mut().on_stream_end(Box::new(move |summary| {
                        line.write_stream(&app, status, timing, summary);
                    }));
                } else {
                    line.write(app, resp, timing);
                }
            }
            if let Some(hsts) = self.hsts {
                resp.headers_mut().insert(STRICT_TRANSPORT_SECURITY, hsts);
            }
            // A `101` keeps its `Connection: upgrade`; the connection is handed over anyway.
            if self.last && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
                resp.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
        }
        answer
    }
}

/// `308` to the same host and path on HTTPS; `400` without a usable Host.
fn redirect<B>(req: &Request<B>, https_port: u16) -> hyper::Response<super::Body> {
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())
        .map(|h| {
            h.rsplit_once(':')
                .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
                .map_or(h, |(name, _)| name)
        });
    let Some(host) = host.filter(|h| !h.is_empty() && !h.contains(['/', '@', ' '])) else {
        return text_response(
            StatusCode::BAD_REQUEST,
            "a Host header is needed to redirect to HTTPS",
        );
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = if https_port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{https_port}{path}")
    };
    let mut resp = text_response(StatusCode::PERMANENT_REDIRECT, "use HTTPS");
    match HeaderValue::from_str(&location) {
        Ok(value) => {
            resp.headers_mut().insert(LOCATION, value);
            resp
        }
        Err(_) => text_response(StatusCode::BAD_REQUEST, "cannot redirect this request"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{Empty, Full};
    use hyper::Version;

    fn get(version: Version, connection: Option<&str>) -> Request<Empty<Bytes>> {
        let mut req = Request::builder().version(version).uri("/ping");
        if let Some(value) = connection {
            req = req.header(CONNECTION, value);
        }
        req.body(Empty::new()).unwrap()
    }

    #[test]
    fn a_bodiless_http1_request_that_asks_for_the_close_is_the_clients_last() {
        const HTTP_10: Version = Version::HTTP_10;
        const HTTP_11: Version = Version::HTTP_11;
        const HTTP_2: Version = Version::HTTP_2;
        assert!(is_last_bodiless(&get(HTTP_11, Some("close"))));
        assert!(is_last_bodiless(&get(HTTP_11, Some("keep-alive , Close"))));
        assert!(
            !is_last_bodiless(&get(HTTP_11, None)),
            "HTTP/1.1 keeps alive"
        );
        assert!(!is_last_bodiless(&get(HTTP_11, Some("keep-alive"))));
        assert!(!is_last_bodiless(&get(HTTP_11, Some("closed"))));
        assert!(!is_last_bodiless(&get(HTTP_11, Some("close, upgrade"))));
        assert!(is_last_bodiless(&get(HTTP_10, None)), "HTTP/1.0 closes");
        assert!(!is_last_bodiless(&get(HTTP_10, Some("Keep-Alive"))));
        assert!(!is_last_bodiless(&get(HTTP_2, None)));
        let with_body = Request::builder()
            .header(CONNECTION, "close")
            .body(Full::new(Bytes::from_static(b"x")))
            .unwrap();
        assert!(!is_last_bodiless(&with_body), "a body may be left unread");
    }
}
