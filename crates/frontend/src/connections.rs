//! The connection table: every open connection of a server, registered in one [`ConnectionTable`]
//! that a single sweeper task walks a few times per period (the idle watchdog) and that the
//! graceful drain wakes and waits on.
//!
//! "Progress" is any byte read from or written to the socket, counted by [`Watched`] (one relaxed
//! add per I/O call, no clock read), and every answered request. At each sweep the watchdog
//! compares a connection's count with the one it saw before; unchanged for a whole period, with no
//! request in flight, means idle. So a silent connection is closed after `header_read_timeout`;
//! an idle HTTP/2 connection after `idle_timeout`; but a slow reader still draining a large
//! response, or a long job running, is never idle. The sweep also keeps HTTP/1's head deadline
//! (hyper's header timer is off): a connection that has waited `header_read_timeout` for a
//! request head, since its accept or its last answer, is closed however the bytes trickle in.
//!
//! Why a table and not a timer and a shutdown watch per connection: a connection's task then
//! polls nothing but hyper's connection on each wake-up, plus two relaxed loads (its close flag and
//! the drain flag). A per-connection timer re-registers its waker, and a shared shutdown watch
//! takes a lock shared by every connection, on every wake-up of every connection.

use crate::hold::HoldEnd;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// What a connection is doing.
#[derive(Debug, Default)]
pub(super) struct Activity {
    in_flight: AtomicUsize,
    progress: AtomicU64,
    served: AtomicBool,
    requests: AtomicUsize,
    /// Bytes-written events: counted apart from reads, so a client that keeps sending while it
    /// reads nothing does not hide a stalled answer.
    writes: AtomicU64,
    /// The last socket write returned `Pending` (the client's window and our send buffer are
    /// full) and none has succeeded since.
    write_blocked: AtomicBool,
    /// Set by the sweeper: the connection has been idle too long and is to be closed.
    close: AtomicBool,
    /// The connection is held after an ignored overflow (see [`crate::hold`]): the sweeper leaves
    /// it to its own deadline, and eviction takes it first.
    held: AtomicBool,
    /// A passed-through upgrade (WebSocket) session on this connection: resolves (or fails)
    /// when it ends. The connection keeps its slot until then.
    session: std::sync::Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
    /// Response bytes made for this connection and not yet taken by hyper (see [`crate::unsent`]).
    unsent: AtomicU64,
    /// Response bytes hyper has taken: progress while answers wait (HTTP/2 takes them only as
    /// the client's flow-control window opens).
    taken: AtomicU64,
    /// Requests whose answer is not made yet (a body to read, a queued or running job): no byte
    /// of their answer has been written (see [`Unanswered`]).
    awaiting: AtomicUsize,
    /// The HTTP version of the latest request ([`VERSION_1_1`] until one is seen).
    version: AtomicU8,
    /// The client's end of input was read and kept from hyper (see `listener::half_close`):
    /// the connection is to close once its answers are written.
    read_closed: AtomicBool,
    /// The latest request is the client's last: HTTP/1, no body, and it asks to close the
    /// connection (see [`Activity::last_request`]). The client sends nothing after it, so the
    /// close after its answer needs no linger (see `listener::linger`).
    client_closes: AtomicBool,
}

/// [`Activity::version`]: HTTP/1.1 (or none seen yet).
const VERSION_1_1: u8 = 0;
/// [`Activity::version`]: HTTP/1.0 (or 0.9), which must not be sent a `1xx` interim answer.
const VERSION_1_0: u8 = 1;
/// [`Activity::version`]: HTTP/2.
const VERSION_2: u8 = 2;

impl Activity {
    fn progressed(&self) {
        self.progress.fetch_add(1, Ordering::Relaxed);
    }

    /// Account one socket write's outcome: progress, or blocked.
    fn wrote(&self, result: &Poll<io::Result<usize>>) {
        match result {
            Poll::Ready(Ok(n)) if *n > 0 => {
                self.progressed();
                self.writes.fetch_add(1, Ordering::Relaxed);
                if self.write_blocked.load(Ordering::Relaxed) {
                    self.write_blocked.store(false, Ordering::Relaxed);
                }
            }
            Poll::Pending => self.write_blocked.store(true, Ordering::Relaxed),
            _ => {}
        }
    }

    /// Count a new request on this connection; returns how many it has had, this one included.
    pub(super) fn request(&self) -> usize {
        self.requests.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// True once a request was read on this connection (see [`Activity::request`]).
    pub(super) fn had_request(&self) -> bool {
        self.requests.load(Ordering::Relaxed) > 0
    }

    /// An upgrade answered `101` on this connection: its session ends when `ended` resolves.
    /// The connection goes on as the upgraded protocol: its request was not the client's last.
    pub(super) fn hold_session(&self, ended: tokio::sync::oneshot::Receiver<()>) {
        self.client_closes.store(false, Ordering::Relaxed);
        *self.session.lock().unwrap_or_else(|p| p.into_inner()) = Some(ended);
    }

    /// The upgrade session this connection was handed to, if any.
    pub(super) fn take_session(&self) -> Option<tokio::sync::oneshot::Receiver<()>> {
        self.session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Response bytes made for this connection and not yet taken.
    pub(super) fn unsent(&self) -> u64 {
        self.unsent.load(Ordering::Relaxed)
    }

    /// `bytes` more made and waiting.
    pub(super) fn hold(&self, bytes: u64) {
        self.unsent.fetch_add(bytes, Ordering::Relaxed);
    }

    /// `bytes` of those waiting taken by hyper (`taken`) or dropped with their answer.
    pub(super) fn release(&self, bytes: u64, taken: bool) {
        self.unsent.fetch_sub(bytes, Ordering::Relaxed);
        if taken {
            self.took(bytes);
        }
    }

    /// `bytes` of an answer taken by hyper: progress for the send deadline.
    pub(super) fn took(&self, bytes: u64) {
        self.taken.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A request of `version` was read: the latest one is the one a half-close concerns.
    pub(super) fn saw(&self, version: hyper::Version) {
        let code = if version >= hyper::Version::HTTP_2 {
            VERSION_2
        } else if version < hyper::Version::HTTP_11 {
            VERSION_1_0
        } else {
            VERSION_1_1
        };
        if self.version.load(Ordering::Relaxed) != code {
            self.version.store(code, Ordering::Relaxed);
        }
    }

    /// A request was read; `closes` if it is HTTP/1, has no body, and asks to close the
    /// connection (`Connection: close`, or HTTP/1.0 without keep-alive): a client that sends
    /// that sends no further byte (RFC 9112, 9.6).
    pub(super) fn last_request(&self, closes: bool) {
        if self.client_closes.load(Ordering::Relaxed) != closes {
            self.client_closes.store(closes, Ordering::Relaxed);
        }
    }

    /// True if the latest request was the client's last, with no body (see
    /// [`Activity::last_request`]): once it is answered, nothing more is to be read.
    pub(super) fn client_closes(&self) -> bool {
        self.client_closes.load(Ordering::Relaxed)
    }

    /// True once an HTTP/2 request was seen on this connection.
    pub(super) fn is_http2(&self) -> bool {
        self.version.load(Ordering::Relaxed) == VERSION_2
    }

    /// True if the latest request is HTTP/1.0 (no `1xx` interim answer may be sent to it).
    pub(super) fn is_http10(&self) -> bool {
        self.version.load(Ordering::Relaxed) == VERSION_1_0
    }

    /// Requests whose answer is not made yet.
    pub(super) fn awaiting(&self) -> usize {
        self.awaiting.load(Ordering::Relaxed)
    }

    /// Requests in flight: awaiting their answer, or with a streamed answer still being sent.
    pub(super) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// True while the last socket write returned `Pending` and none has succeeded since.
    pub(super) fn is_write_blocked(&self) -> bool {
        self.write_blocked.load(Ordering::Relaxed)
    }

    /// The client's end of input was kept from hyper: close once the answers are written.
    pub(super) fn close_read(&self) {
        self.read_closed.store(true, Ordering::SeqCst);
    }

    /// A request answered as soon as it was read (never in flight across an await).
    pub(super) fn answered_at_once(&self) {
        if !self.served.load(Ordering::Relaxed) {
            self.served.store(true, Ordering::Relaxed);
        }
        self.progressed();
    }
}

/// Marks a request in flight until dropped (answered, or abandoned by a client that left).
pub(super) struct InFlight(Arc<Activity>);

impl InFlight {
    pub(super) fn new(activity: &Arc<Activity>) -> InFlight {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.served.store(true, Ordering::Relaxed);
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.progressed();
    }
}

/// Marks a request whose answer is not made yet, until dropped (the answer is made, or the
/// request abandoned): a half-closed client's connection may be probed meanwhile, since no byte
/// of the answer has been written.
pub(super) struct Unanswered(Arc<Activity>);

impl Unanswered {
    pub(super) fn new(activity: &Arc<Activity>) -> Unanswered {
        activity.awaiting.fetch_add(1, Ordering::Relaxed);
        Unanswered(activity.clone())
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        self.0.awaiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A socket whose reads and writes count as progress.
pub(super) struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Watched<S> {
    pub(super) fn new(inner: S, activity: Arc<Activity>) -> Watched<S> {
        Watched { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.progressed();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        self.activity.wrote(&result);
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.activity.wrote(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Every open connection of a server: for the idle sweep and the graceful drain.
#[derive(Debug, Default)]
pub(super) struct ConnectionTable {
    slots: Mutex<Slots>,
    draining: AtomicBool,
    /// Notified when the last registered connection goes (see [`ConnectionTable::all_closed`]).
    emptied: Notify,
}

#[derive(Debug, Default)]
struct Slots {
    entries: Vec<Option<Entry>>,
    free: Vec<usize>,
    live: usize,
}

#[derive(Debug)]
struct Entry {
    activity: Arc<Activity>,
    waker: Option<Waker>,
    /// The progress count at the last sweep that saw it change, and when that was.
    seen: u64,
    quiet_since: Instant,
    /// The write count at the last sweep that saw it change, and when that was.
    seen_writes: u64,
    writes_since: Instant,
    /// The taken-bytes count at the last sweep that saw it change or no bytes waiting, and when.
    seen_taken: u64,
    taken_since: Instant,
    /// The request and write counts at the last sweep that saw either change or the connection
    /// busy, and when: since then the connection has waited for a request head (see
    /// [`ConnectionTable::sweep`], the head deadline).
    head_requests: usize,
    head_writes: u64,
    head_since: Instant,
    /// The accept loop that took it: a listener at its limit evicts only its own connections.
    listener: &'static str,
    /// When it was registered (for eviction: the oldest of those without a request goes first).
    opened: Instant,
}

impl Entry {
    /// Mark the connection to be closed and wake its task; true if it was not marked already.
    fn close(&self) -> bool {
        if self.activity.close.swap(true, Ordering::SeqCst) {
            return false;
        }
        if let Some(waker) = &self.waker {
            waker.wake_by_ref();
        }
        true
    }
}

/// What [`ConnectionTable::evict_slowest`] closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Evicted {
    /// A connection held after an ignored overflow.
    Held,
    /// A connection that never completed a request head.
    Silent,
}

/// A connection's place in [`ConnectionTable`], given up when dropped.
pub(super) struct Registration {
    connections: Arc<ConnectionTable>,
    slot: usize,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut slots = self.connections.lock();
        if let Some(entry) = slots.entries.get_mut(self.slot) {
            if entry.take().is_some() {
                slots.free.push(self.slot);
                slots.live -= 1;
            }
        }
        let emptied = slots.live == 0;
        drop(slots);
        if emptied {
            self.connections.emptied.notify_waiters();
        }
    }
}

impl ConnectionTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register a connection accepted by `listener`; it is watched until the registration is
    /// dropped.
    pub(super) fn register(
        self: &Arc<Self>,
        activity: Arc<Activity>,
        listener: &'static str,
    ) -> Registration {
        let now = Instant::now();
        let entry = Entry {
            seen: activity.progress.load(Ordering::Relaxed),
            activity,
            waker: None,
            quiet_since: now,
            seen_writes: 0,
            writes_since: now,
            seen_taken: 0,
            taken_since: now,
            head_requests: 0,
            head_writes: 0,
            head_since: now,
            listener,
            opened: now,
        };
        let mut slots = self.lock();
        slots.live += 1;
        let slot = match slots.free.pop() {
            Some(slot) => {
                if let Some(place) = slots.entries.get_mut(slot) {
                    *place = Some(entry);
                }
                slot
            }
            None => {
                slots.entries.push(Some(entry));
                slots.entries.len() - 1
            }
        };
        Registration {
            connections: self.clone(),
            slot,
        }
    }

    /// Connections registered now.
    pub(super) fn live(&self) -> usize {
        self.lock().live
    }

    /// Resolves once no connection is registered (at once if none is).
    pub(super) async fn all_closed(&self) {
        loop {
            // Enabled before the check, so a last close between the two is not missed.
            let emptied = self.emptied.notified();
            tokio::pin!(emptied);
            emptied.as_mut().enable();
            if self.live() == 0 {
                return;
            }
            emptied.await;
        }
    }

    /// Make room on `listener`, at its connection limit: close a held connection (see
    /// [`crate::hold`]: its client gets no answer anyway), the one held longest; with none held,
    /// the connection open longest that has never completed a request head (a slowloris, or one
    /// silent since its accept). One with a request in flight, or one that has been served and is
    /// not held, is never chosen. Returns what was closed, if anything; its slot frees as soon as
    /// its task sees the flag.
    pub(super) fn evict_slowest(&self, listener: &'static str) -> Option<Evicted> {
        let slots = self.lock();
        let open = |entry: &&Entry| {
            entry.listener == listener && !entry.activity.close.load(Ordering::SeqCst)
        };
        let held = slots
            .entries
            .iter()
            .flatten()
            .filter(open)
            .filter(|entry| entry.activity.held.load(Ordering::SeqCst))
            .min_by_key(|entry| entry.opened);
        let (victim, evicted) = match held {
            Some(victim) => (victim, Evicted::Held),
            None => {
                let silent = slots
                    .entries
                    .iter()
                    .flatten()
                    .filter(open)
                    .filter(|entry| {
                        let activity = &entry.activity;
                        activity.requests.load(Ordering::Relaxed) == 0
                            && activity.in_flight.load(Ordering::Relaxed) == 0
                    })
                    .min_by_key(|entry| entry.opened)?;
                (silent, Evicted::Silent)
            }
        };
        victim.activity.close.store(true, Ordering::SeqCst);
        if let Some(waker) = &victim.waker {
            waker.wake_by_ref();
        }
        Some(evicted)
    }

    /// Begin the graceful drain: every connection finishes the requests it has and closes
    /// (HTTP/1 after its current response, HTTP/2 with GOAWAY).
    pub(super) fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        for entry in self.lock().entries.iter().flatten() {
            if let Some(waker) = &entry.waker {
                waker.wake_by_ref();
            }
        }
    }

    /// One sweep at `now`: mark and wake every connection idle for a whole period (`silent`
    /// before its first request, `idle` after), whose client has accepted no byte of a pending
    /// answer for `send`, or (HTTP/1) that has waited `silent` for a request head however many
    /// bytes of it came (the head deadline, below). Returns how many it closed.
    fn sweep(&self, now: Instant, silent: Duration, idle: Duration, send: Duration) -> usize {
        let mut closed = 0;
        for entry in self.lock().entries.iter_mut().flatten() {
            let activity = &entry.activity;
            if activity.held.load(Ordering::Relaxed) {
                // A held connection has its own deadline (see `Registration::hold`).
                continue;
            }
            // The send deadline: blocked writes with no byte taken by the client for `send`,
            // whatever else the connection does (it may keep sending, or have a request in flight);
            // or answers waiting with none of their bytes taken by hyper for `send` (an HTTP/2
            // client whose flow-control window stays shut never blocks a socket write).
            let writes = activity.writes.load(Ordering::Relaxed);
            if writes != entry.seen_writes || !activity.write_blocked.load(Ordering::Relaxed) {
                entry.seen_writes = writes;
                entry.writes_since = now;
            }
            let taken = activity.taken.load(Ordering::Relaxed);
            if taken != entry.seen_taken || activity.unsent() == 0 {
                entry.seen_taken = taken;
                entry.taken_since = now;
            }
            let stalled = entry.writes_since.min(entry.taken_since);
            if now.saturating_duration_since(stalled) >= send {
                closed += usize::from(entry.close());
                continue;
            }
            // The head deadline (`header_read_timeout`; hyper's own header timer is off, see
            // `listener.rs`): an HTTP/1 connection waits for a request head from its accept, or
            // from the sweep that saw its last request read or its last answer's bytes written,
            // and is closed once that wait reaches `silent`, whatever bytes of a head trickle in
            // meanwhile (a slowloris). A request in flight, an answer waiting for hyper or for
            // the client (a blocked write: the send deadline above bounds it), or HTTP/2 (no
            // heads to wait for: its pings and the idle period bound it) restart the wait. Like
            // hyper's timer, the wait includes a kept-alive connection's idle time.
            let requests = activity.requests.load(Ordering::Relaxed);
            let in_flight = activity.in_flight.load(Ordering::Relaxed);
            if requests != entry.head_requests
                || writes != entry.head_writes
                || in_flight > 0
                || activity.unsent() > 0
                || activity.write_blocked.load(Ordering::Relaxed)
                || activity.is_http2()
            {
                entry.head_requests = requests;
                entry.head_writes = writes;
                entry.head_since = now;
            } else if now.saturating_duration_since(entry.head_since) >= silent {
                closed += usize::from(entry.close());
                continue;
            }
            let progress = activity.progress.load(Ordering::Relaxed);
            if progress != entry.seen || in_flight > 0 {
                entry.seen = progress;
                entry.quiet_since = now;
                continue;
            }
            let period = if activity.served.load(Ordering::Relaxed) {
                idle
            } else {
                silent
            };
            if now.saturating_duration_since(entry.quiet_since) >= period {
                closed += usize::from(entry.close());
            }
        }
        closed
    }

    /// The sweeper: runs until the task is dropped. It looks four times per period, so an idle
    /// connection is closed between one period and one and a quarter after it went quiet.
    pub(super) async fn sweeper(self: Arc<Self>, silent: Duration, idle: Duration, send: Duration) {
        let tick = (silent.min(idle).min(send) / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut ticks = tokio::time::interval(tick);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let now = ticks.tick().await;
            let closed = self.sweep(now, silent, idle, send);
            if closed > 0 {
                tracing::trace!(closed, "idle connections closed");
            }
        }
    }
}

impl Registration {
    /// Register this task's waker in the table (once, and again only if it changes), so that the
    /// sweeper, eviction and the drain can wake it; called before the flags are checked, since
    /// they are set before the wake-up.
    fn watch(&self, cx: &Context<'_>, waker: &mut Option<Waker>) {
        if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *waker = Some(cx.waker().clone());
            if let Some(Some(entry)) = self.connections.lock().entries.get_mut(self.slot) {
                entry.waker = Some(cx.waker().clone());
            }
        }
    }

    /// Drive `conn` until it ends, or until the sweeper finds it idle (`None`); once the drain
    /// begins, or the client's end of input was kept from hyper (a half-close), ask it to shut
    /// down gracefully (`graceful_shutdown`: HTTP/1 closes after its current answer) and keep
    /// driving it.
    pub(super) async fn serve<C>(
        &self,
        activity: &Activity,
        conn: Pin<&mut C>,
        graceful_shutdown: impl Fn(Pin<&mut C>),
    ) -> Option<C::Output>
    where
        C: Future,
    {
        let connections = &self.connections;
        let mut conn = conn;
        let mut waker: Option<Waker> = None;
        let mut graceful = false;
        std::future::poll_fn(|cx| {
            self.watch(cx, &mut waker);
            if activity.close.load(Ordering::SeqCst) {
                return Poll::Ready(None);
            }
            if !graceful
                && (connections.draining.load(Ordering::SeqCst)
                    || activity.read_closed.load(Ordering::SeqCst))
            {
                graceful = true;
                graceful_shutdown(conn.as_mut());
            }
            conn.as_mut().poll(cx).map(Some)
        })
        .await
    }

    /// Hold the connection after an ignored overflow (see [`crate::hold`]): marked held (the
    /// sweeper leaves it alone, eviction takes it first) until `until`, until `client_closed`
    /// resolves, until it is evicted, or until the drain begins; whichever comes first.
    pub(super) async fn hold(
        &self,
        activity: &Activity,
        until: Instant,
        client_closed: impl Future<Output = ()>,
    ) -> HoldEnd {
        activity.held.store(true, Ordering::SeqCst);
        let deadline = tokio::time::sleep_until(until);
        tokio::pin!(deadline, client_closed);
        let mut waker: Option<Waker> = None;
        std::future::poll_fn(|cx| {
            self.watch(cx, &mut waker);
            if activity.close.load(Ordering::SeqCst) {
                return Poll::Ready(HoldEnd::Evicted);
            }
            if self.connections.draining.load(Ordering::SeqCst) {
                return Poll::Ready(HoldEnd::Drained);
            }
            if client_closed.as_mut().poll(cx).is_ready() {
                return Poll::Ready(HoldEnd::ClientClosed);
            }
            deadline.as_mut().poll(cx).map(|()| HoldEnd::Expired)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEND: Duration = Duration::from_secs(30);

    #[tokio::test(start_paused = true)]
    async fn a_quiet_connection_is_closed_after_its_period_and_a_busy_one_never() {
        let silent = Duration::from_secs(2);
        let idle = Duration::from_secs(60);
        let connections = Arc::new(ConnectionTable::default());
        let quiet = Arc::new(Activity::default());
        let busy = Arc::new(Activity::default());
        let _q = connections.register(quiet.clone(), "test");
        let _b = connections.register(busy.clone(), "test");
        // HTTP/2: the head deadline (see the next test) is HTTP/1's.
        busy.saw(hyper::Version::HTTP_2);
        let request = InFlight::new(&busy);
        let start = Instant::now();
        assert_eq!(connections.sweep(start + silent / 2, silent, idle, SEND), 0);
        assert_eq!(connections.sweep(start + silent, silent, idle, SEND), 1);
        assert!(quiet.close.load(Ordering::SeqCst));
        assert!(
            !busy.close.load(Ordering::SeqCst),
            "a request in flight is never idle"
        );
        // Once answered, the busy one has served a request: its period is `idle` from then on.
        drop(request);
        let answered = start + silent * 2;
        assert_eq!(
            connections.sweep(answered, silent, idle, SEND),
            0,
            "progress"
        );
        assert_eq!(
            connections.sweep(answered + idle / 2, silent, idle, SEND),
            0
        );
        assert_eq!(connections.sweep(answered + idle, silent, idle, SEND), 1);
        assert!(busy.close.load(Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn an_http1_connection_waiting_for_a_head_is_closed_at_the_head_deadline_though_bytes_come(
    ) {
        let head = Duration::from_secs(2);
        let idle = Duration::from_secs(60);
        let connections = Arc::new(ConnectionTable::default());
        let slow = Arc::new(Activity::default());
        let kept = Arc::new(Activity::default());
        let _s = connections.register(slow.clone(), "test");
        let _k = connections.register(kept.clone(), "test");
        let start = Instant::now();
        // `slow` sends a byte of a head now and then; `kept` reads a request, and answers it.
        slow.progressed();
        kept.request();
        let request = InFlight::new(&kept);
        assert_eq!(connections.sweep(start + head / 2, head, idle, SEND), 0);
        slow.progressed();
        assert_eq!(connections.sweep(start + head, head, idle, SEND), 1);
        assert!(slow.close.load(Ordering::SeqCst), "bytes are not a head");
        // A request in flight holds the wait however long it runs.
        assert_eq!(connections.sweep(start + head * 10, head, idle, SEND), 0);
        drop(request);
        kept.wrote(&Poll::Ready(Ok(100)));
        let answered = start + head * 11;
        assert_eq!(connections.sweep(answered, head, idle, SEND), 0);
        // Waiting for the next head, idle or not: the deadline counts from the answer.
        kept.progressed();
        assert_eq!(connections.sweep(answered + head / 2, head, idle, SEND), 0);
        kept.request();
        assert_eq!(
            connections.sweep(answered + head, head, idle, SEND),
            0,
            "a new request restarts the wait"
        );
        assert_eq!(connections.sweep(answered + head * 2, head, idle, SEND), 1);
        assert!(kept.close.load(Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn eviction_takes_the_oldest_connection_without_a_request_and_never_a_served_one() {
        let connections = Arc::new(ConnectionTable::default());
        let served = Arc::new(Activity::default());
        served.request();
        let (old, young, other) = (
            Arc::new(Activity::default()),
            Arc::new(Activity::default()),
            Arc::new(Activity::default()),
        );
        let _s = connections.register(served.clone(), "main");
        let _o = connections.register(old.clone(), "main");
        tokio::time::sleep(Duration::from_millis(2)).await;
        let _y = connections.register(young.clone(), "main");
        let _a = connections.register(other.clone(), "admin");
        assert_eq!(connections.evict_slowest("main"), Some(Evicted::Silent));
        assert!(old.close.load(Ordering::SeqCst), "the oldest goes first");
        assert_eq!(connections.evict_slowest("main"), Some(Evicted::Silent));
        assert!(young.close.load(Ordering::SeqCst));
        assert_eq!(
            connections.evict_slowest("main"),
            None,
            "a served one is never evicted"
        );
        assert!(!served.close.load(Ordering::SeqCst));
        assert!(
            !other.close.load(Ordering::SeqCst),
            "another listener's is not touched"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_connection_is_evicted_before_any_silent_one_and_the_sweeper_leaves_it_alone() {
        let connections = Arc::new(ConnectionTable::default());
        let silent = Arc::new(Activity::default());
        let _s = connections.register(silent.clone(), "main");
        tokio::time::sleep(Duration::from_millis(2)).await;
        let held = Arc::new(Activity::default());
        held.request();
        let h = connections.register(held.clone(), "main");
        let holding = tokio::spawn({
            let held = held.clone();
            async move {
                let until = Instant::now() + Duration::from_secs(3600);
                h.hold(&held, until, std::future::pending()).await
            }
        });
        while !held.held.load(Ordering::SeqCst) {
            tokio::task::yield_now().await;
        }
        let (quiet, idle) = (Duration::from_secs(1), Duration::from_secs(1));
        let later = Instant::now() + Duration::from_secs(60);
        assert_eq!(
            connections.sweep(later, quiet, idle, SEND),
            1,
            "the silent one only"
        );
        assert!(!held.close.load(Ordering::SeqCst));
        silent.close.store(false, Ordering::SeqCst);
        assert_eq!(connections.evict_slowest("main"), Some(Evicted::Held));
        assert!(!silent.close.load(Ordering::SeqCst), "though it is older");
        let ended = tokio::time::timeout(Duration::from_secs(5), holding)
            .await
            .expect("the hold ends once evicted")
            .expect("the holding task");
        assert_eq!(ended, HoldEnd::Evicted);
    }

    #[tokio::test(start_paused = true)]
    async fn blocked_writes_close_at_the_send_timeout_even_while_the_client_keeps_sending() {
        let (silent, idle) = (Duration::from_secs(10), Duration::from_secs(60));
        let connections = Arc::new(ConnectionTable::default());
        let stalled = Arc::new(Activity::default());
        stalled.request();
        let _s = connections.register(stalled.clone(), "main");
        let start = Instant::now();
        stalled.wrote(&Poll::Ready(Ok(100)));
        stalled.wrote(&Poll::Pending);
        assert_eq!(connections.sweep(start, silent, idle, SEND), 0);
        stalled.progressed(); // the client sends a byte: not a write
        assert_eq!(connections.sweep(start + SEND / 2, silent, idle, SEND), 0);
        assert_eq!(connections.sweep(start + SEND, silent, idle, SEND), 1);
        assert!(stalled.close.load(Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn untaken_answers_close_at_the_send_timeout_though_the_client_keeps_answering_pings() {
        let (silent, idle) = (Duration::from_secs(600), Duration::from_secs(600));
        let connections = Arc::new(ConnectionTable::default());
        let shut = Arc::new(Activity::default());
        let reading = Arc::new(Activity::default());
        let _s = connections.register(shut.clone(), "main");
        let _r = connections.register(reading.clone(), "main");
        let start = Instant::now();
        for activity in [&shut, &reading] {
            activity.request();
            activity.hold(1 << 20);
            activity.release(16 << 10, true);
        }
        assert_eq!(connections.sweep(start, silent, idle, SEND), 0);
        shut.progressed(); // a PING answered: read progress, nothing taken
        reading.release(16 << 10, true);
        assert_eq!(connections.sweep(start + SEND / 2, silent, idle, SEND), 0);
        reading.release(16 << 10, true);
        assert_eq!(connections.sweep(start + SEND, silent, idle, SEND), 1);
        assert!(shut.close.load(Ordering::SeqCst));
        assert!(
            !reading.close.load(Ordering::SeqCst),
            "its client takes bytes"
        );
        // With nothing left waiting, a quiet period is not a stalled send.
        reading.release(reading.unsent(), true);
        assert_eq!(connections.sweep(start + SEND * 3, silent, idle, SEND), 0);
    }

    #[test]
    fn slots_are_reused_and_live_counts_registrations() {
        let connections = Arc::new(ConnectionTable::default());
        let a = connections.register(Arc::new(Activity::default()), "test");
        let b = connections.register(Arc::new(Activity::default()), "test");
        assert_eq!(connections.live(), 2);
        let slot = a.slot;
        drop(a);
        assert_eq!(connections.live(), 1);
        let c = connections.register(Arc::new(Activity::default()), "test");
        assert_eq!(c.slot, slot, "a freed slot is taken again");
        drop((b, c));
        assert_eq!(connections.live(), 0);
    }

    #[tokio::test]
    async fn all_closed_resolves_when_the_last_registration_goes() {
        let connections = Arc::new(ConnectionTable::default());
        connections.all_closed().await; // none registered: at once
        let a = connections.register(Arc::new(Activity::default()), "test");
        let b = connections.register(Arc::new(Activity::default()), "test");
        let waiting = tokio::spawn({
            let connections = connections.clone();
            async move { connections.all_closed().await }
        });
        tokio::task::yield_now().await;
        drop(a);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "one connection is still open");
        drop(b);
        tokio::time::timeout(Duration::from_secs(20), waiting)
            .await
            .expect("all_closed resolves once the last one goes")
            .expect("the waiting task");
    }
}
