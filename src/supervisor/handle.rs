//! The supervisor as front-ends see it: a [`Handle`] to admit connections,
//! open [`Session`]s and learn when the daemon stops, and a [`Session`] to
//! submit, cancel and query on behalf of one client.
//!
//! Owns turning a front-end's calls into arbiter events, and the limits
//! the core puts on every front-end alike: `max_connections` open at once
//! (counted here, across front-ends, and shown by status) and
//! [`EVENTS_IN_FLIGHT`] requests of one session waiting for the arbiter.
//! It never touches the queue, a worker or a socket, and never answers a
//! request: replies come back through the session's [`Outbox`].
use super::event::{ConnId, Event, Lifecycle, Query, Submission, Ticket};
use super::outbox::Outbox;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use thiserror::Error;
use tokio::sync::{mpsc, watch, Semaphore};

/// Requests of one session that may wait for the arbiter at a time: a
/// front-end takes a [`Ticket`] before it reads the next request off its
/// wire, so a client pipelining megabyte frames makes the daemon hold a
/// few megabytes, not all of them.
pub const EVENTS_IN_FLIGHT: usize = 2;

/// Every connection open: `max_connections` of them.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[error("too many connections (max_connections = {max})")]
pub struct Full {
    pub max: usize,
}

/// The arbiter has stopped and takes nothing more.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[error("the daemon has stopped")]
pub struct Stopped;

/// The way into the supervisor, cloned into every front-end.
#[derive(Clone, Debug)]
pub struct Handle {
    events: mpsc::UnboundedSender<Event>,
    lifecycle: watch::Receiver<Lifecycle>,
    connections: Arc<AtomicUsize>,
    max_connections: usize,
    next_conn: Arc<AtomicU64>,
    /// Held by every handle and admission: the supervisor waits (briefly)
    /// for all of them to go before it exits, so that last replies are
    /// written.
    flushed: mpsc::Sender<()>,
}

/// One connection counted against `max_connections` while it lives. A
/// front-end keeps it until the connection's last byte is written.
#[derive(Debug)]
pub struct Admission {
    count: Arc<AtomicUsize>,
    _flushed: mpsc::Sender<()>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Handle {
    pub(super) fn new(
        events: mpsc::UnboundedSender<Event>,
        lifecycle: watch::Receiver<Lifecycle>,
        connections: Arc<AtomicUsize>,
        max_connections: usize,
        flushed: mpsc::Sender<()>,
    ) -> Self {
        Self { events, lifecycle, connections, max_connections, next_conn: Arc::new(AtomicU64::new(1)), flushed }
    }

    /// Count one more connection, unless `max_connections` are open.
    pub fn admit(&self) -> Result<Admission, Full> {
        let max = self.max_connections;
        self.connections
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max).then_some(n + 1))
            .map_err(|_| Full { max })?;
        Ok(Admission { count: self.connections.clone(), _flushed: self.flushed.clone() })
    }

    /// Open a session whose replies go to `out` (after the front-end's own
    /// handshake, if its wire has one).
    pub fn connect(&self, out: Outbox) -> Result<Session, Stopped> {
        let conn = self.next_conn.fetch_add(1, Ordering::SeqCst);
        self.events.send(Event::Connected { conn, out: out.clone() }).map_err(|_| Stopped)?;
        Ok(Session { conn, events: self.events.clone(), out, tickets: Arc::new(Semaphore::new(EVENTS_IN_FLIGHT)) })
    }

    /// Resolves once the daemon begins to stop: accept no more connections.
    pub async fn stopping(&self) {
        let mut rx = self.lifecycle.clone();
        // An error: the arbiter is gone, which is stopped too.
        let _ = rx.wait_for(|l| *l != Lifecycle::Serving).await;
    }

    /// Resolves once the arbiter is done: every request answered, every
    /// worker gone. Then a front-end removes what it made (a socket file).
    pub async fn stopped(&self) {
        let mut rx = self.lifecycle.clone();
        let _ = rx.wait_for(|l| *l == Lifecycle::Stopped).await;
    }
}

/// One client's requests, as the arbiter sees them. Dropping it tells the
/// arbiter the client is gone: its queued and running requests are
/// cancelled.
#[derive(Debug)]
pub struct Session {
    conn: ConnId,
    events: mpsc::UnboundedSender<Event>,
    out: Outbox,
    tickets: Arc<Semaphore>,
}

impl Session {
    pub fn id(&self) -> ConnId {
        self.conn
    }

    /// Waits for one of this session's [`EVENTS_IN_FLIGHT`] places; take
    /// it before reading the next request off the wire. `None` cannot
    /// happen (the places are never closed) and would end the session.
    pub async fn ticket(&self) -> Option<Ticket> {
        self.tickets.clone().acquire_owned().await.ok().map(Ticket::new)
    }

    /// Queue a synthesize request; it arrived now. Its replies (`Queued`,
    /// `Audio` and `Timings`, then exactly one `Done` or `Error`) go to the
    /// outbox.
    pub fn submit(&self, ticket: Ticket, sub: Submission) -> Result<(), Stopped> {
        self.send(Event::Submit { conn: self.conn, sub, arrived: Instant::now(), ticket })
    }

    /// The next piece of this session's streamed-text request `id`.
    pub fn append(&self, ticket: Ticket, id: u64, text: String) -> Result<(), Stopped> {
        self.send(Event::Append { conn: self.conn, id, text, ticket })
    }

    /// No more pieces for this session's streamed-text request `id`.
    pub fn finish(&self, ticket: Ticket, id: u64) -> Result<(), Stopped> {
        self.send(Event::Finish { conn: self.conn, id, ticket })
    }

    /// Cancel this session's request `id`.
    pub fn cancel(&self, ticket: Ticket, id: u64) -> Result<(), Stopped> {
        self.send(Event::Cancel { conn: self.conn, id, ticket })
    }

    /// Ask about the daemon; answered with one reply.
    pub fn query(&self, ticket: Ticket, what: Query) -> Result<(), Stopped> {
        self.send(Event::Query { conn: self.conn, what, ticket })
    }

    fn send(&self, ev: Event) -> Result<(), Stopped> {
        self.events.send(ev).map_err(|_| Stopped)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.events.send(Event::Disconnected { conn: self.conn, reason: self.out.close_reason() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::outbox::test_channel;

    fn handle(max: usize) -> (Handle, mpsc::UnboundedReceiver<Event>, watch::Sender<Lifecycle>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (life_tx, life_rx) = watch::channel(Lifecycle::Serving);
        let (flushed, _) = mpsc::channel(1);
        (Handle::new(tx, life_rx, Arc::new(AtomicUsize::new(0)), max, flushed), rx, life_tx)
    }

    #[test]
    fn admissions_are_capped_and_given_back() {
        let (h, _rx, _life) = handle(2);
        let a = h.admit().unwrap();
        let _b = h.admit().unwrap();
        assert_eq!(h.admit().unwrap_err(), Full { max: 2 });
        assert_eq!(Full { max: 2 }.to_string(), "too many connections (max_connections = 2)");
        drop(a);
        assert!(h.admit().is_ok());
    }

    #[tokio::test]
    async fn a_session_is_events_from_connected_to_disconnected() {
        let (h, mut rx, life) = handle(4);
        let (out, _outgoing) = test_channel();
        let s = h.connect(out).unwrap();
        assert!(matches!(rx.try_recv(), Ok(Event::Connected { conn, .. }) if conn == s.id()));
        let t1 = s.ticket().await.unwrap();
        let _t2 = s.ticket().await.unwrap();
        let third = tokio::time::timeout(std::time::Duration::from_millis(50), s.ticket()).await;
        assert!(third.is_err(), "at most EVENTS_IN_FLIGHT wait for the arbiter");
        s.cancel(t1, 7).unwrap();
        let ev = rx.try_recv().unwrap();
        assert!(matches!(ev, Event::Cancel { id: 7, .. }));
        drop(ev);
        assert!(s.ticket().await.is_some(), "the arbiter dropping the event gives the place back");
        let conn = s.id();
        drop(s);
        assert!(matches!(rx.try_recv(), Ok(Event::Disconnected { conn: c, reason: None }) if c == conn));
        life.send(Lifecycle::Stopping).unwrap();
        h.stopping().await;
        life.send(Lifecycle::Stopped).unwrap();
        h.stopped().await;
    }
}
