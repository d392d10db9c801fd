//! Load clients: each one a connection that sends synthesize requests from
//! the text mix, closed loop (one in flight) or paced (`--rate`), some with
//! fault flags, and waits for every one's terminal reply. Half of the
//! streamed requests send their text in pieces (protocol version 2's
//! OpenText, AppendText of a few bytes each, FinishText), so kills and
//! faults also land on texts still arriving.
//!
//! Owns request ids (globally unique: client index in the high bits, so the
//! status reply's `current_request` names one request) and the "lost" verdict.
//! Never waits on a request past its `wait_limit` (it is then lost and its
//! connection dropped), and a closed-loop client never has two in flight.
use crate::conn::{ConnEvent, LoadConn};
use crate::texts::{self, Rng};
use crate::track::{FlagFault, Record, Tracker};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use ttsd::protocol::{Input, Request, SpeechOptions, SynthRequest};

/// Bytes per piece of a text sent in pieces: cuts words and sentences.
const PIECE_BYTES: usize = 12;

#[derive(Clone)]
pub struct LoadSpec {
    pub socket: PathBuf,
    pub stream_fraction: f64,
    pub fault_fraction: f64,
    pub fault_kinds: Vec<FlagFault>,
    /// Requests per second per client (`None`: closed loop).
    pub per_client_rate: Option<f64>,
    /// Deadline sent with every request.
    pub timeout_ms: u64,
    /// A request without its terminal reply after this is lost.
    pub wait_limit: Duration,
    pub seed: u64,
}

/// Shared stop conditions: a request budget and a stop flag.
#[derive(Clone)]
pub struct Budget {
    pub left: Arc<AtomicI64>,
    pub stop: Arc<AtomicBool>,
}

impl Budget {
    fn take(&self) -> bool {
        !self.stop.load(Ordering::SeqCst) && self.left.fetch_sub(1, Ordering::SeqCst) > 0
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst) || self.left.load(Ordering::SeqCst) <= 0
    }
}

pub fn id_base(client: usize) -> u64 {
    (client as u64 + 1) << 32
}

/// A load request to make: who sends it, its id, what it says, and how.
pub struct NewRequest<'a> {
    pub client: usize,
    pub id: u64,
    pub text: (texts::TextKind, &'a str),
    pub stream: bool,
    /// Its text goes out in pieces (a streamed text).
    pub pieces: bool,
    pub fault: Option<FlagFault>,
}

/// `text` cut every [`PIECE_BYTES`] bytes, on character boundaries.
fn pieces(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut piece = String::new();
    for c in text.chars() {
        piece.push(c);
        if piece.len() >= PIECE_BYTES {
            out.push(std::mem::take(&mut piece));
        }
    }
    if !piece.is_empty() {
        out.push(piece);
    }
    out
}

/// One synthesize request (the frames that make it) and its record (not
/// yet sent).
pub fn make_request(tracker: &Tracker, n: NewRequest, timeout_ms: u64) -> (Vec<Request>, Record) {
    let NewRequest { client, id, text, stream, pieces: in_pieces, fault } = n;
    let now = Instant::now();
    let req = SynthRequest {
        id,
        stream,
        timeout_ms: Some(timeout_ms),
        fault: fault.map(FlagFault::to_fault),
        ..SynthRequest::text(text.1)
    };
    debug_assert!(matches!(req.input, Input::Text(_)));
    let rec = Record {
        id,
        client,
        text_kind: text.0,
        chars: text.1.chars().count(),
        stream,
        fault,
        sent_s: tracker.secs(now),
        sent: Some(now),
        queued_ms: None,
        first_audio_ms: None,
        total_ms: None,
        end_s: None,
        outcome: None,
        message: None,
        terminals: 0,
        after_terminal: 0,
        seq_gaps: 0,
        audio_frames: 0,
        samples: 0,
        sample_rate: 0,
        audio_seconds: 0.0,
        server_queue_ms: 0,
        synth_ms: 0,
        worker_pid: 0,
        retried: false,
    };
    if !in_pieces {
        return (vec![Request::Synthesize(req)], rec);
    }
    let opts = SpeechOptions::default();
    let mut frames = vec![Request::OpenText { req: SynthRequest { input: Input::Text(String::new()), ..req }, opts }];
    frames.extend(pieces(text.1).into_iter().map(|text| Request::AppendText { id, text }));
    frames.push(Request::FinishText { id });
    (frames, rec)
}

/// Run one client until the budget or the stop flag ends it, then wait for
/// its requests in flight (up to `wait_limit` each).
pub fn run_client(client: usize, spec: LoadSpec, budget: Budget, tracker: Tracker) {
    let mut rng = Rng::new(spec.seed ^ (client as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407));
    let mut next_id = id_base(client);
    let mut conn: Option<LoadConn> = None;
    // id -> give-up time
    let mut pending: HashMap<u64, Instant> = HashMap::new();
    let interval = spec.per_client_rate.map(|r| Duration::from_secs_f64(1.0 / r.max(0.001)));
    // Spread paced clients over the first interval.
    let mut next_send = Instant::now() + interval.map_or(Duration::ZERO, |i| i.mul_f64(rng.unit()));
    let max_in_flight = if interval.is_some() { 256 } else { 1 };
    loop {
        let now = Instant::now();
        if conn.is_none() {
            // Anything still pending on a dead connection is lost.
            for (id, _) in pending.drain() {
                tracker.lost(id, "connection closed before the terminal reply", now);
            }
            if budget.stopped() {
                break;
            }
            match LoadConn::open(&spec.socket, &format!("stress-{client}"), &tracker) {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    eprintln!("ttsd-stress: client {client}: cannot connect: {e:#}");
                    std::thread::sleep(Duration::from_millis(500));
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected above");
        if budget.stopped() && pending.is_empty() {
            c.flush(Duration::from_secs(5));
            break;
        }
        if pending.len() < max_in_flight && now >= next_send && budget.take() {
            let id = next_id;
            next_id += 1;
            let (req, rec) = make_request(&tracker, draw(&mut rng, &spec, client, id), spec.timeout_ms);
            tracker.sent(rec);
            pending.insert(id, now + spec.wait_limit);
            if let Some(i) = interval {
                next_send += i;
            }
            if req.iter().any(|r| c.send(r).is_err()) {
                conn = None;
            }
            continue;
        }
        let wake = if interval.is_some() && !budget.stopped() {
            next_send.saturating_duration_since(now).min(Duration::from_millis(100))
        } else {
            Duration::from_millis(100)
        };
        match c.events.recv_timeout(wake) {
            Ok(ConnEvent::Terminal(id)) => {
                pending.remove(&id);
            }
            Ok(ConnEvent::Health) => {}
            Ok(ConnEvent::Closed(why)) => {
                let now = Instant::now();
                for (id, _) in pending.drain() {
                    tracker.lost(id, &format!("connection ended before the terminal reply: {why}"), now);
                }
                conn = None;
            }
            Err(_) => {}
        }
        if expire_overdue(&mut pending, &tracker, spec.wait_limit) {
            // Whatever comes late on this connection is not waited for.
            conn = None;
        }
    }
}

/// The next request of a load client: a text from the mix, streamed or
/// not, with a fault flag or not, as the spec's fractions say.
fn draw(rng: &mut Rng, spec: &LoadSpec, client: usize, id: u64) -> NewRequest<'static> {
    let text = texts::pick(rng);
    let stream = rng.chance(spec.stream_fraction);
    let pieces = stream && rng.chance(0.5);
    let fault = if !spec.fault_kinds.is_empty() && rng.chance(spec.fault_fraction) {
        Some(spec.fault_kinds[rng.below(spec.fault_kinds.len())])
    } else {
        None
    };
    NewRequest { client, id, text, stream, pieces, fault }
}

/// Mark the requests past their give-up time lost; true if there were any.
fn expire_overdue(pending: &mut HashMap<u64, Instant>, tracker: &Tracker, wait_limit: Duration) -> bool {
    let now = Instant::now();
    let overdue: Vec<u64> = pending.iter().filter(|(_, &t)| now > t).map(|(&id, _)| id).collect();
    for id in &overdue {
        pending.remove(id);
        tracker.lost(*id, &format!("no terminal reply within {wait_limit:?}"), now);
    }
    !overdue.is_empty()
}

/// Send one request on a fresh connection and wait for its end (used for
/// the scheduled fault-flag requests).
pub fn one_request(spec: &LoadSpec, tracker: &Tracker, client: usize, id: u64, fault: FlagFault, stream: bool) {
    let text = (texts::TextKind::Short, "Fault injection request.");
    let n = NewRequest { client, id, text, stream, pieces: false, fault: Some(fault) };
    let (req, rec) = make_request(tracker, n, spec.timeout_ms);
    let mut conn = match LoadConn::open(&spec.socket, "stress-fault", tracker) {
        Ok(c) => c,
        Err(e) => {
            tracker.sent(rec);
            tracker.lost(id, &format!("cannot connect: {e:#}"), Instant::now());
            return;
        }
    };
    tracker.sent(rec);
    if req.iter().any(|r| conn.send(r).is_err()) {
        tracker.lost(id, "send failed", Instant::now());
        return;
    }
    let until = Instant::now() + spec.wait_limit;
    loop {
        match conn.events.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok(ConnEvent::Terminal(i)) if i == id => break,
            Ok(ConnEvent::Terminal(_)) | Ok(ConnEvent::Health) => {}
            Ok(ConnEvent::Closed(why)) => {
                tracker.lost(id, &format!("connection ended: {why}"), Instant::now());
                return;
            }
            Err(_) => {
                tracker.lost(id, &format!("no terminal reply within {:?}", spec.wait_limit), Instant::now());
                return;
            }
        }
    }
    conn.flush(Duration::from_secs(5));
}
