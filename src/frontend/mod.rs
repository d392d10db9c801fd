//! Front-ends: the ways clients reach the daemon. Each one is an adapter
//! between a wire and the supervisor's core.
//!
//! # The seam
//!
//! The core ([`crate::supervisor`]) takes internal requests and emits
//! internal replies, in the protocol's vocabulary
//! ([`SynthRequest`](crate::protocol::SynthRequest),
//! [`Reply`](crate::protocol::Reply)), and knows no wire. A front-end
//! implements [`supervisor::Frontend`] and, for each client:
//! 1. checks that the client may connect (its wire's own rules) and takes
//!    an [`Admission`](crate::supervisor::Admission) from
//!    [`Handle::admit`](crate::supervisor::Handle::admit) (`max_connections`
//!    counts every front-end's connections together);
//! 2. makes the client's reply sink with
//!    [`supervisor::outbox::channel`],
//!    giving its own encoder (a reply as bytes of its wire), and writes what
//!    comes out of the [`Outgoing`](crate::supervisor::Outgoing) end;
//! 3. opens a [`Session`](crate::supervisor::Session) with
//!    [`Handle::connect`](crate::supervisor::Handle::connect) after its own
//!    handshake;
//! 4. parses its wire, checks its own limits (frame sizes, timeouts, when
//!    to stop reading), and translates each request into
//!    `submit`/`cancel`/`query` on the session, taking a
//!    [`Ticket`](crate::supervisor::Ticket) before reading the next one;
//! 5. drops the session when the client goes (its requests are cancelled).
//!
//! The core answers every synthesize request with `Queued`, any `Audio`,
//! then exactly one `Done` or `Error`; a front-end translates those into
//! its wire's messages (a speech-dispatcher module's events, Wyoming's
//! `audio-chunk`s, an HTTP body and status) and may leave out what its wire
//! has no word for, never the terminal reply.
//!
//! A front-end never touches the queue, a worker, a request's bookkeeping
//! or another front-end: it imports the supervisor's [`Handle`] and
//! [`Session`] and the types they carry, never `arbiter`, `pool` or
//! `request`. Adding one (speech-dispatcher, Wyoming and an HTTP API are
//! coming) is a new file here, its settings, and one line in [`run`]; the
//! arbiter does not change.
//!
//! # Listeners
//!
//! Each front-end owns its listener: the native one binds the Unix socket
//! (or takes it from systemd), checks peers with `SO_PEERCRED`, and removes
//! the socket file at exit. Who may connect, and how, is a property of the
//! wire (a peer uid means something on a Unix socket and nothing over TCP),
//! so it is not the core's; how many clients are connected at once is the
//! core's, because they all hold its memory. [`socket`] and [`activation`]
//! are shared by any front-end that listens on a Unix socket.
//!
//! [`Handle`]: crate::supervisor::Handle
//! [`Session`]: crate::supervisor::Session
pub mod activation;
pub mod native;
pub mod socket;

use crate::config::{Config, Overrides};
use crate::supervisor::{self, SupervisorError};
use std::path::PathBuf;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Socket(#[from] socket::SocketError),
    #[error(transparent)]
    Activation(#[from] activation::ActivationError),
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
}

/// The daemon: the supervisor with every configured front-end (today the
/// native protocol on the Unix socket). Call before any thread is started
/// (socket activation reads and clears environment variables). Returns once
/// the daemon has stopped.
pub fn run(cfg: Config, config_path: Option<PathBuf>, overrides: Overrides) -> Result<(), Error> {
    let native = native::Native::listen(&cfg)?;
    supervisor::run(cfg, config_path, overrides, vec![Box::new(native)])?;
    Ok(())
}
