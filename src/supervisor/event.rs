//! What the arbiter hears and what it announces: the events its loop
//! handles, the queries a client may make, the ids they carry, and the
//! daemon's [`Lifecycle`].
//!
//! Owns these types only. It holds no state and decides nothing: sessions
//! and worker tasks send events, the arbiter alone receives them.
use super::outbox::{CloseReason, Outbox};
use crate::protocol::worker::FromWorker;
use crate::protocol::{SpeechOptions, SynthRequest};
use std::process::ExitStatus;
use std::time::Instant;
use tokio::sync::OwnedSemaphorePermit;

/// Identifies a client connection (a session) for the daemon's lifetime.
pub type ConnId = u64;
/// Identifies a worker process for the daemon's lifetime.
pub type WorkerId = u64;
/// Identifies one attempt at a request on a worker, unique for the
/// daemon's lifetime (the worker protocol's `job`).
pub type JobId = u64;

#[derive(Debug)]
pub enum Event {
    /// A session opened: replies for `conn` go to `out`.
    Connected { conn: ConnId, out: Outbox },
    /// A request's `ticket` is released when the event is dropped, letting
    /// its session hand over the next one.
    Submit { conn: ConnId, sub: Submission, arrived: Instant, ticket: Ticket },
    Cancel { conn: ConnId, id: u64, ticket: Ticket },
    /// The next piece of streamed-text request `id`.
    Append { conn: ConnId, id: u64, text: String, ticket: Ticket },
    /// No more pieces for streamed-text request `id`.
    Finish { conn: ConnId, id: u64, ticket: Ticket },
    Query { conn: ConnId, what: Query, ticket: Ticket },
    /// `reason`: the daemon closed it (else the client did, or it broke).
    Disconnected { conn: ConnId, reason: Option<CloseReason> },
    Worker { wid: WorkerId, msg: FromWorker },
    Exited { wid: WorkerId, status: ExitStatus },
}

/// A synthesize request as a front-end hands it over: the request, what
/// version 2 added to it, and whether its text is still arriving.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    pub req: SynthRequest,
    pub opts: SpeechOptions,
    /// The text arrives in pieces (`Session::append`, then `finish`);
    /// `req.input` holds the first.
    pub streamed_text: bool,
}

impl Submission {
    /// All the text at once.
    pub fn whole(req: SynthRequest, opts: SpeechOptions) -> Self {
        Self { req, opts, streamed_text: false }
    }

    /// The first piece of a text still arriving.
    pub fn streamed(req: SynthRequest, opts: SpeechOptions) -> Self {
        Self { req, opts, streamed_text: true }
    }
}

/// What a client may ask about the daemon; answered at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    Status,
    Health,
    Voices,
}

/// One of a session's few places in the arbiter's queue of events (see
/// `handle::EVENTS_IN_FLIGHT`), held by the event it travels with.
#[derive(Debug)]
pub struct Ticket(#[allow(dead_code)] OwnedSemaphorePermit);

impl Ticket {
    pub(super) fn new(permit: OwnedSemaphorePermit) -> Self {
        Self(permit)
    }
}

/// Where the daemon is in its life, as front-ends see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    Serving,
    /// SIGTERM/SIGINT: stop accepting; the arbiter finishes what it has.
    Stopping,
    /// The arbiter is done: every request answered, every worker gone.
    Stopped,
}
