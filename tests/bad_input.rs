//! The bad-input suite: raw byte-level and protocol-level attacks, each with
//! the error code PROTOCOL.md gives it, each run while a valid request is in
//! flight on another connection; that request must still end `done`.
//!
//! One #[test] per case, named after it, so a failure names its case and
//! the others still run. The cases share one daemon per test binary (2
//! workers, max_text_chars = 100, max_connections = 8, max_frame_bytes =
//! 64 KiB, queue_capacity = 16, max_requests_per_connection = 4,
//! hang_timeout_ms = 10 s), started on first use and taken one case at a
//! time (they count connections and fill queues). A case that needs other
//! settings (idle timeout, a stalled log reader) starts its own.
//!
//! The cases at the end guard the resource bounds of issue 15 (echoed
//! input, unread replies, log volume, idle connections, one client taking
//! the queue, a stalled log reader); each failed before its fix.
//!
//! Must not rely on the order the cases run in or on a wall-clock bound
//! under a second; every read is bounded (20 s), so a stuck daemon fails a
//! case and never hangs the suite.
mod common;

use common::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use ttsd::client::Client;
use ttsd::protocol::{self, ErrorCode, Input, Reply, Request, SynthRequest, PROTOCOL_VERSION};

const MAX_TEXT: usize = 100;
const MAX_CONNECTIONS: usize = 8;
const MAX_FRAME: usize = 65536;
/// Long enough (two sentences, ~0.5-1 s of CPU) to still be running while
/// an attack happens.
const BYSTANDER: &str = "This request keeps a worker busy while the attack runs. It must still end done.";

struct Ctx<'a> {
    d: &'a Daemon,
}

type CaseResult = Result<String, String>;

/// A connection whose reads and writes give up after 20 s: a daemon that
/// stops reading or answering fails a case instead of hanging it.
fn raw(d: &Daemon) -> UnixStream {
    let s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

fn hello(d: &Daemon) -> UnixStream {
    let mut s = raw(d);
    protocol::write_frame(&mut s, &Request::Hello { version: PROTOCOL_VERSION, client: "bad-input".into() }).unwrap();
    match read(&mut s) {
        Ok(Some(Reply::HelloOk { .. })) => s,
        other => panic!("handshake: {other:?}"),
    }
}

fn read(s: &mut UnixStream) -> Result<Option<Reply>, String> {
    protocol::read_frame::<Reply, _>(s, 1 << 26).map_err(|e| e.to_string())
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

fn synth(id: u64, text: &str) -> SynthRequest {
    SynthRequest { id, ..SynthRequest::text(text) }
}

/// The encoded frame of `req`, with `marker` (which must occur once in the
/// payload) replaced by `with` (same length: the prefix stays right).
fn patched(req: &Request, marker: &[u8], with: &[u8]) -> Vec<u8> {
    assert_eq!(marker.len(), with.len());
    let mut bytes = protocol::encode(req).unwrap();
    let at = bytes.windows(marker.len()).position(|w| w == marker).expect("marker in frame");
    bytes[at..at + marker.len()].copy_from_slice(with);
    bytes
}

/// Expect exactly `Error { id, code }` as the next reply.
fn expect_error(s: &mut UnixStream, id: Option<u64>, code: ErrorCode) -> CaseResult {
    loop {
        match read(s)? {
            Some(Reply::Queued { id: q, .. }) if Some(q) == id => continue,
            Some(Reply::Error { id: i, code: c, message }) if i == id && c == code => return Ok(format!("{c}: {message}")),
            other => return Err(format!("expected Error {{ id: {id:?}, code: {code} }}, got {other:.120?}")),
        }
    }
}

/// After a connection-level error the connection must still work.
fn expect_usable(s: &mut UnixStream) -> Result<(), String> {
    protocol::write_frame(s, &Request::Health).map_err(|e| e.to_string())?;
    match read(s)? {
        Some(Reply::Health { .. }) => Ok(()),
        other => Err(format!("connection not usable afterwards: {other:.120?}")),
    }
}

/// After a fatal error the daemon must close the connection.
fn expect_closed(s: &mut UnixStream) -> Result<(), String> {
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) if rest.is_empty() => Ok(()),
        Ok(_) => Err(format!("{} more bytes instead of a close", rest.len())),
        // A reset also ends it (we may have sent bytes it never read).
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
        Err(e) => Err(format!("not closed: {e}")),
    }
}

/// A synthesize request that must be refused with `code` (terminal, with its id).
fn refused(ctx: &Ctx, req: SynthRequest, code: ErrorCode) -> CaseResult {
    let mut s = hello(ctx.d);
    let id = req.id;
    protocol::write_frame(&mut s, &Request::Synthesize(req)).map_err(|e| e.to_string())?;
    let r = expect_error(&mut s, Some(id), code)?;
    expect_usable(&mut s)?;
    Ok(r)
}

/// Raw bytes after a good handshake: `code` with no id, connection kept.
fn malformed_kept(ctx: &Ctx, bytes: &[u8], code: ErrorCode) -> CaseResult {
    let mut s = hello(ctx.d);
    s.write_all(bytes).map_err(|e| e.to_string())?;
    let r = expect_error(&mut s, None, code)?;
    expect_usable(&mut s)?;
    Ok(r)
}

/// Raw bytes after a good handshake: `code` with no id, then closed.
fn fatal_after_hello(ctx: &Ctx, bytes: &[u8], code: ErrorCode) -> CaseResult {
    let mut s = hello(ctx.d);
    let _ = s.write_all(bytes);
    let r = expect_error(&mut s, None, code)?;
    expect_closed(&mut s)?;
    Ok(r)
}

fn scale(f: impl Fn(&mut SynthRequest)) -> SynthRequest {
    let mut r = synth(1, SHORT);
    f(&mut r);
    r
}

fn case_text_over_limit(ctx: &Ctx) -> CaseResult {
    let r = refused(ctx, synth(1, &"a".repeat(MAX_TEXT + 1)), ErrorCode::BadRequest)?;
    // Characters, not bytes: 101 two-byte characters are over, too.
    refused(ctx, synth(2, &"é".repeat(MAX_TEXT + 1)), ErrorCode::BadRequest)?;
    Ok(r)
}

/// NUL is a control character: the engine reads every control character
/// as a space (Piper's sanitising, engine/phonemize `sanitize`), so a NUL
/// inside a text is not an error: "Hello\0world." is spoken as "Hello
/// world." and ends done. (A text of NULs only is empty: bad_request, below.)
fn case_nul_inside(ctx: &Ctx) -> CaseResult {
    let mut s = hello(ctx.d);
    protocol::write_frame(&mut s, &Request::Synthesize(synth(1, "Hello\0world."))).map_err(|e| e.to_string())?;
    loop {
        match read(&mut s)? {
            Some(Reply::Queued { .. }) | Some(Reply::Audio { .. }) => {}
            Some(Reply::Done { id: 1, audio_seconds, .. }) if audio_seconds > 0.3 => {
                expect_usable(&mut s)?;
                return Ok(format!("done, {audio_seconds:.2} s of audio (NUL read as a space)"));
            }
            other => return Err(format!("expected done, got {other:.120?}")),
        }
    }
}

fn case_invalid_utf8(ctx: &Ctx) -> CaseResult {
    let req = Request::Synthesize(synth(1, "Hello XXXX there."));
    malformed_kept(ctx, &patched(&req, b"XXXX", &[0xff, 0xfe, 0xc0, 0x80]), ErrorCode::MalformedFrame)
}

fn case_zero_length_frame(ctx: &Ctx) -> CaseResult {
    malformed_kept(ctx, &[0, 0, 0, 0], ErrorCode::MalformedFrame)
}

fn case_length_4gib(ctx: &Ctx) -> CaseResult {
    fatal_after_hello(ctx, &[0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4], ErrorCode::FrameTooLarge)
}

fn case_length_over_max_frame(ctx: &Ctx) -> CaseResult {
    let mut bytes = ((MAX_FRAME + 1) as u32).to_le_bytes().to_vec();
    bytes.extend_from_slice(&[0u8; 16]);
    fatal_after_hello(ctx, &bytes, ErrorCode::FrameTooLarge)
}

fn case_truncated_then_close(ctx: &Ctx) -> CaseResult {
    let mut s = hello(ctx.d);
    let bytes = protocol::encode(&Request::Synthesize(synth(1, SHORT))).unwrap();
    s.write_all(&bytes[..bytes.len() / 2]).map_err(|e| e.to_string())?;
    s.shutdown(std::net::Shutdown::Write).map_err(|e| e.to_string())?;
    // Nothing to answer: no request was ever complete. Just a close.
    match read(&mut s) {
        Ok(None) => Ok("closed without a reply".into()),
        other => Err(format!("expected a close, got {other:.120?}")),
    }
}

fn case_garbage_before_hello(ctx: &Ctx) -> CaseResult {
    // 0xefbeadde as a length: far over the limit.
    let mut s = raw(ctx.d);
    let garbage: Vec<u8> = (0..64u32).map(|i| [0xde, 0xad, 0xbe, 0xef][i as usize % 4] ^ (i as u8 >> 2)).collect();
    let _ = s.write_all(&garbage);
    let r = expect_error(&mut s, None, ErrorCode::FrameTooLarge)?;
    expect_closed(&mut s)?;
    Ok(r)
}

fn case_garbage_payload_before_hello(ctx: &Ctx) -> CaseResult {
    // A plausible length, a payload that is no message: malformed, and as
    // it was the handshake, the connection is closed.
    let mut s = raw(ctx.d);
    s.write_all(&frame(&[0x5a; 32])).map_err(|e| e.to_string())?;
    let r = expect_error(&mut s, None, ErrorCode::MalformedFrame)?;
    expect_closed(&mut s)?;
    Ok(r)
}

fn case_garbage_after_hello(ctx: &Ctx) -> CaseResult {
    let mut payload = vec![0u8; 40];
    let mut x = 0x1234_5678u32;
    for b in payload.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    payload[..4].copy_from_slice(&1000u32.to_le_bytes()); // an impossible tag
    malformed_kept(ctx, &frame(&payload), ErrorCode::MalformedFrame)
}

fn case_wrong_version(ctx: &Ctx) -> CaseResult {
    let mut s = raw(ctx.d);
    protocol::write_frame(&mut s, &Request::Hello { version: PROTOCOL_VERSION + 1, client: "future".into() })
        .map_err(|e| e.to_string())?;
    let r = expect_error(&mut s, None, ErrorCode::UnsupportedVersion)?;
    expect_closed(&mut s)?;
    Ok(r)
}

fn case_no_hello_first(ctx: &Ctx) -> CaseResult {
    let mut s = raw(ctx.d);
    protocol::write_frame(&mut s, &Request::Synthesize(synth(1, SHORT))).map_err(|e| e.to_string())?;
    let r = expect_error(&mut s, None, ErrorCode::BadRequest)?;
    expect_closed(&mut s)?;
    Ok(r)
}

fn case_second_hello(ctx: &Ctx) -> CaseResult {
    let bytes = protocol::encode(&Request::Hello { version: PROTOCOL_VERSION, client: "again".into() }).unwrap();
    malformed_kept(ctx, &bytes, ErrorCode::BadRequest)
}

fn case_unknown_message_kind(ctx: &Ctx) -> CaseResult {
    malformed_kept(ctx, &frame(&99u32.to_le_bytes()), ErrorCode::MalformedFrame)
}

fn case_enum_tag_inside_a_field(ctx: &Ctx) -> CaseResult {
    // Synthesize: [tag 1][id u64][Input tag u32]...: make Input's tag 7.
    let mut bytes = protocol::encode(&Request::Synthesize(synth(1, SHORT))).unwrap();
    assert_eq!(&bytes[16..20], &0u32.to_le_bytes());
    bytes[16..20].copy_from_slice(&7u32.to_le_bytes());
    malformed_kept(ctx, &bytes, ErrorCode::MalformedFrame)
}

fn case_lying_string_length(ctx: &Ctx) -> CaseResult {
    // A Hello-shaped frame whose string claims 2^60 bytes.
    let mut p = 0u32.to_le_bytes().to_vec();
    p.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    p.extend_from_slice(&(1u64 << 60).to_le_bytes());
    p.extend_from_slice(b"abc");
    let mut s = raw(ctx.d);
    s.write_all(&frame(&p)).map_err(|e| e.to_string())?;
    let r = expect_error(&mut s, None, ErrorCode::MalformedFrame)?;
    expect_closed(&mut s)?;
    Ok(r)
}

fn case_lying_phoneme_count(ctx: &Ctx) -> CaseResult {
    let req = Request::Synthesize(SynthRequest { id: 1, input: Input::PhonemeIds(vec![1, 2]), ..SynthRequest::text("") });
    let mut bytes = protocol::encode(&req).unwrap();
    // [len][tag 1][id][Input tag 1][count u64]: claim 2^40 ids.
    assert_eq!(&bytes[20..28], &2u64.to_le_bytes());
    bytes[20..28].copy_from_slice(&(1u64 << 40).to_le_bytes());
    malformed_kept(ctx, &bytes, ErrorCode::MalformedFrame)
}

fn case_trailing_bytes(ctx: &Ctx) -> CaseResult {
    let mut p = protocol::encode(&Request::Health).unwrap()[4..].to_vec();
    p.extend_from_slice(&[0, 0, 0]);
    malformed_kept(ctx, &frame(&p), ErrorCode::MalformedFrame)
}

fn case_duplicate_id(ctx: &Ctx) -> CaseResult {
    let mut s = hello(ctx.d);
    protocol::write_frame(&mut s, &Request::Synthesize(synth(42, "The first request with this id."))).map_err(|e| e.to_string())?;
    protocol::write_frame(&mut s, &Request::Synthesize(synth(42, "A second one, same id."))).map_err(|e| e.to_string())?;
    // The duplicate is refused at connection level; the first still ends done, once.
    let mut dup = None;
    let mut done = 0;
    let mut other = Vec::new();
    while done == 0 {
        match read(&mut s)? {
            Some(Reply::Error { id: None, code: ErrorCode::DuplicateId, message }) => dup = Some(message),
            Some(Reply::Done { id: 42, .. }) => done += 1,
            Some(Reply::Queued { .. }) | Some(Reply::Audio { .. }) => {}
            r => {
                other.push(format!("{r:.100?}"));
                if matches!(r, Some(Reply::Error { id: Some(42), .. }) | None) {
                    break;
                }
            }
        }
    }
    expect_usable(&mut s)?;
    match (dup, done, other.is_empty()) {
        (Some(m), 1, true) => Ok(format!("duplicate_id: {m}; the first ended done")),
        (d, n, _) => Err(format!("duplicate answered {d:?}, first done {n} times, other replies {other:?}")),
    }
}

fn case_cancel_unknown(ctx: &Ctx) -> CaseResult {
    let bytes = protocol::encode(&Request::Cancel { id: 777 }).unwrap();
    malformed_kept(ctx, &bytes, ErrorCode::UnknownId)
}

/// Connections held up to `max_connections` (counting those already open,
/// less the probe that asks, which closes), then one more, raw.
fn fill_connections(ctx: &Ctx) -> Result<(Vec<UnixStream>, UnixStream), String> {
    let open = Client::connect(&ctx.d.socket).map_err(|e| e.to_string())?.status().map_err(|e| e.to_string())?.connections
        as usize;
    let mut held: Vec<UnixStream> = Vec::new();
    for _ in open.saturating_sub(1)..MAX_CONNECTIONS {
        held.push(hello(ctx.d));
    }
    Ok((held, raw(ctx.d)))
}

fn case_too_many_connections(ctx: &Ctx) -> CaseResult {
    // Fill up to the limit, then one more.
    let (held, mut extra) = fill_connections(ctx)?;
    let r = expect_error(&mut extra, None, ErrorCode::Overloaded)?;
    expect_closed(&mut extra)?;
    // Freed slots are usable again.
    drop(held);
    let t = Instant::now();
    loop {
        match Client::connect(&ctx.d.socket).and_then(|mut c| c.health()) {
            Ok(_) => break,
            Err(e) if t.elapsed() > Duration::from_secs(5) => return Err(format!("no connection after freeing: {e}")),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    Ok(r)
}

/// A peer with another uid: a forked child that setuid()s to `nobody`
/// connects and must get permission_denied (needs root; the policy itself
/// is unit-tested in src/frontend/socket.rs).
fn case_other_uid(ctx: &Ctx) -> CaseResult {
    if !nix::unistd::geteuid().is_root() {
        return Err("needs root to connect as another uid".into());
    }
    let nobody = nix::unistd::User::from_name("nobody").ok().flatten().ok_or("no user 'nobody'")?;
    // Let `nobody` reach the socket at all (the directory is 0700 and the
    // socket 0600), so that the daemon's SO_PEERCRED check is what refuses.
    use std::os::unix::fs::PermissionsExt;
    let dir = ctx.d.socket.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&ctx.d.socket, std::fs::Permissions::from_mode(0o666)).map_err(|e| e.to_string())?;
    let reply = connect_as(&ctx.d.socket, nobody.uid.as_raw(), nobody.gid.as_raw());
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| e.to_string())?;
    let bytes = reply?;
    match protocol::read_frame::<Reply, _>(&mut &bytes[..], 1 << 20) {
        Ok(Some(Reply::Error { id: None, code: ErrorCode::PermissionDenied, message })) => {
            Ok(format!("uid {} refused: permission_denied: {message}", nobody.uid))
        }
        other => Err(format!("uid {} got {other:.120?} ({} bytes)", nobody.uid, bytes.len())),
    }
}

/// Fork; the child drops to `uid`/`gid`, connects, sends Hello, and passes
/// back what it read through a pipe. Everything it needs is prepared before
/// the fork: the child only makes system calls.
fn connect_as(socket: &std::path::Path, uid: u32, gid: u32) -> Result<Vec<u8>, String> {
    use std::os::unix::ffi::OsStrExt;
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let p = socket.as_os_str().as_bytes();
    if p.len() >= addr.sun_path.len() {
        return Err("socket path too long".into());
    }
    for (d, s) in addr.sun_path.iter_mut().zip(p) {
        *d = *s as libc::c_char;
    }
    let hello = protocol::encode(&Request::Hello { version: PROTOCOL_VERSION, client: "nobody".into() }).unwrap();
    let mut buf = vec![0u8; 4096];
    let (rd, wr) = nix::unistd::pipe().map_err(|e| e.to_string())?;
    use std::os::fd::AsRawFd;
    let (rfd, wfd) = (rd.as_raw_fd(), wr.as_raw_fd());
    // SAFETY: the child calls only async-signal-safe functions, then _exit.
    match unsafe { libc::fork() } {
        -1 => Err("fork failed".into()),
        0 => unsafe {
            libc::close(rfd);
            if libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
                libc::_exit(10);
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            if fd < 0 {
                libc::_exit(11);
            }
            let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            if libc::connect(fd, &addr as *const _ as *const libc::sockaddr, len) != 0 {
                libc::_exit(12);
            }
            libc::write(fd, hello.as_ptr() as *const _, hello.len());
            let mut got = 0usize;
            loop {
                let n = libc::read(fd, buf.as_mut_ptr().add(got) as *mut _, buf.len() - got);
                if n <= 0 {
                    break;
                }
                got += n as usize;
            }
            libc::write(wfd, buf.as_ptr() as *const _, got);
            libc::_exit(0);
        },
        child => {
            drop(wr);
            let mut out = Vec::new();
            let mut f = std::fs::File::from(rd);
            let _ = f.read_to_end(&mut out);
            let mut status = 0;
            unsafe { libc::waitpid(child, &mut status, 0) };
            let code = libc::WEXITSTATUS(status);
            if code != 0 {
                return Err(format!("child as uid {uid} failed at step {code} (10 setuid, 11 socket, 12 connect)"));
            }
            Ok(out)
        }
    }
}

/// A refused synthesize request as a case.
fn r(req: SynthRequest, code: ErrorCode) -> impl FnOnce(&Ctx) -> CaseResult {
    move |ctx| refused(ctx, req, code)
}

fn ids(v: Vec<i64>) -> SynthRequest {
    SynthRequest { id: 1, input: Input::PhonemeIds(v), ..SynthRequest::text("") }
}

/// The shared daemon's queue and per-connection limits (small, so that the
/// cases that fill them stay cheap).
const QUEUE: usize = 16;
const PER_CONNECTION: usize = 4;

fn shared_config() -> String {
    // hang_timeout_ms well above the engine's longest stage on a busy
    // machine: heartbeats go out between stages, and no case here hangs.
    format!(
        "max_text_chars = {MAX_TEXT}\nmax_connections = {MAX_CONNECTIONS}\nmax_frame_bytes = {MAX_FRAME}\n\
         hang_timeout_ms = 10000\nqueue_capacity = {QUEUE}\nmax_requests_per_connection = {PER_CONNECTION}"
    )
}

struct Shared {
    d: Daemon,
    /// One case at a time: cases count connections and fill queues.
    turn: Mutex<()>,
}

/// The daemon every case of this file shares, started on first use.
fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        // A static is never dropped, so the daemon must die with the test
        // process instead: it is started (with PR_SET_PDEATHSIG) from a
        // thread that lives as long as the process.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let d = Daemon::start_with(&shared_config(), Spawn { stderr: None, die_with_parent: true });
            let _ = tx.send(d);
            loop {
                std::thread::park();
            }
        });
        let d = rx.recv().expect("the shared daemon did not start (see the panic above)");
        d.wait_idle(2, Duration::from_secs(120));
        Shared { d, turn: Mutex::new(()) }
    })
}

/// Run `case` on the shared daemon, one case at a time.
fn on_shared(name: &str, case: impl FnOnce(&Ctx) -> CaseResult) {
    let s = shared();
    // A case that failed (panicked) poisons the lock; the next one goes on.
    let _turn = s.turn.lock().unwrap_or_else(|e| e.into_inner());
    run_case(&s.d, name, case);
}

/// `req` on a fresh connection, every read bounded, so that a daemon that
/// stopped answering fails the test instead of hanging it.
fn query(d: &Daemon, req: Request) -> Result<Reply, String> {
    let mut s = UnixStream::connect(&d.socket).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(20))).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(Duration::from_secs(20))).map_err(|e| e.to_string())?;
    protocol::write_frame(&mut s, &Request::Hello { version: PROTOCOL_VERSION, client: "bad-input".into() })
        .map_err(|e| e.to_string())?;
    match read(&mut s)? {
        Some(Reply::HelloOk { .. }) => {}
        other => return Err(format!("handshake: {other:.120?}")),
    }
    protocol::write_frame(&mut s, &req).map_err(|e| e.to_string())?;
    read(&mut s)?.ok_or_else(|| "closed".to_string())
}

fn restarts(d: &Daemon) -> Result<u64, String> {
    match query(d, Request::Status)? {
        Reply::Status(s) => Ok(s.worker_restarts),
        other => Err(format!("status: {other:.120?}")),
    }
}

/// Run `case` while a valid request is in flight on another connection;
/// that request must end `done`, no worker may be lost, and the daemon must
/// still answer health afterwards.
fn run_case(d: &Daemon, name: &str, case: impl FnOnce(&Ctx) -> CaseResult) {
    let ctx = Ctx { d };
    let before = restarts(d).unwrap_or_else(|e| panic!("{name}: the daemon does not answer before the case: {e}"));
    // The valid request: accepted (Queued) before the attack starts.
    let mut bystander = hello(d);
    bystander.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let valid = SynthRequest { stream: name.len().is_multiple_of(2), ..synth(1, BYSTANDER) };
    protocol::write_frame(&mut bystander, &Request::Synthesize(valid)).unwrap();
    match read(&mut bystander) {
        Ok(Some(Reply::Queued { id: 1, .. })) => {}
        other => panic!("{name}: bystander: {other:?}"),
    }
    let t = Instant::now();
    let result = case(&ctx);
    let took = t.elapsed();
    let mut problems = Vec::new();
    if let Err(e) = must_end_done(&mut bystander, 1) {
        problems.push(format!("the request in flight: {e}"));
    }
    // Whatever a case did, the daemon must still answer health. A generous
    // bound: only a blocked supervisor (the defect) takes this long.
    let t = Instant::now();
    match query(d, Request::Health) {
        Ok(Reply::Health { .. }) => {}
        other => problems.push(format!("health afterwards: {other:.120?}")),
    }
    if t.elapsed() > Duration::from_secs(5) {
        problems.push(format!("health took {:?} afterwards", t.elapsed()));
    }
    match restarts(d) {
        Ok(after) if after == before => {}
        Ok(after) => problems.push(format!("a bad input cost a worker ({before} -> {after} restarts)")),
        Err(e) => problems.push(format!("status afterwards: {e}")),
    }
    let detail = match &result {
        Ok(s) => s.clone(),
        Err(e) => {
            problems.insert(0, e.clone());
            String::new()
        }
    };
    eprintln!("{name} ({} ms): {detail}", took.as_millis());
    if !problems.is_empty() {
        let log = d.log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
        panic!("{name}: {}\n--- ttsd log (last lines) ---\n{}", problems.join("; "), tail.join("\n"));
    }
}

/// One #[test] per case, on the shared daemon, named after the case.
macro_rules! cases {
    ($($(#[$m:meta])* $name:ident => $case:expr;)*) => {
        $( $(#[$m])* #[test] fn $name() { on_shared(stringify!($name), $case) } )*
    };
}

cases! {
    empty_text => r(synth(1, ""), ErrorCode::BadRequest);
    whitespace_only_text => r(synth(1, " \t\n\u{3000} "), ErrorCode::BadRequest);
    text_over_max_text_chars_in_bytes_and_characters => case_text_over_limit;
    invalid_utf8_in_the_text_field => case_invalid_utf8;
    nul_byte_inside_the_text_is_read_as_a_space => case_nul_inside;
    text_of_nul_bytes_only => r(synth(1, "\0\0\0"), ErrorCode::BadRequest);
    unknown_voice => r(SynthRequest { voice: Some("nobody".into()), ..synth(1, SHORT) }, ErrorCode::UnknownVoice);
    speaker_out_of_range => r(scale(|q| q.speaker = Some(1)), ErrorCode::BadRequest);
    speaker_u32_max => r(scale(|q| q.speaker = Some(u32::MAX)), ErrorCode::BadRequest);
    negative_length_scale => r(scale(|q| q.length_scale = Some(-1.0)), ErrorCode::BadRequest);
    zero_length_scale => r(scale(|q| q.length_scale = Some(0.0)), ErrorCode::BadRequest);
    nan_length_scale => r(scale(|q| q.length_scale = Some(f32::NAN)), ErrorCode::BadRequest);
    infinite_length_scale => r(scale(|q| q.length_scale = Some(f32::INFINITY)), ErrorCode::BadRequest);
    negative_noise_scale => r(scale(|q| q.noise_scale = Some(-0.5)), ErrorCode::BadRequest);
    infinite_noise_scale => r(scale(|q| q.noise_scale = Some(f32::INFINITY)), ErrorCode::BadRequest);
    nan_noise_w => r(scale(|q| q.noise_w = Some(f32::NAN)), ErrorCode::BadRequest);
    negative_noise_w => r(scale(|q| q.noise_w = Some(-1.0)), ErrorCode::BadRequest);
    zero_timeout_ms => r(scale(|q| q.timeout_ms = Some(0)), ErrorCode::BadRequest);
    phoneme_id_past_the_voices_symbols => r(ids(vec![1, 0, 256, 0, 2]), ErrorCode::BadRequest);
    negative_phoneme_id => r(ids(vec![1, -5, 2]), ErrorCode::BadRequest);
    phoneme_id_i64_max => r(ids(vec![1, i64::MAX, 2]), ErrorCode::BadRequest);
    empty_phoneme_list => r(ids(vec![]), ErrorCode::BadRequest);
    zero_length_frame => case_zero_length_frame;
    length_prefix_of_4_gib => case_length_4gib;
    length_prefix_one_past_max_frame_bytes => case_length_over_max_frame;
    truncated_frame_then_close => case_truncated_then_close;
    random_garbage_instead_of_hello => case_garbage_before_hello;
    garbage_payload_instead_of_hello => case_garbage_payload_before_hello;
    random_garbage_frame_after_hello => case_garbage_after_hello;
    wrong_protocol_version => case_wrong_version;
    first_frame_not_hello => case_no_hello_first;
    second_hello => case_second_hello;
    unknown_message_kind_tag_99 => case_unknown_message_kind;
    enum_tag_out_of_range_inside_a_field => case_enum_tag_inside_a_field;
    string_length_prefix_of_2_pow_60 => case_lying_string_length;
    phoneme_count_of_2_pow_40_in_a_small_frame => case_lying_phoneme_count;
    trailing_bytes_after_a_message => case_trailing_bytes;
    duplicate_request_id => case_duplicate_id;
    cancel_of_an_unknown_id => case_cancel_unknown;
    more_connections_than_max_connections => case_too_many_connections;
    #[ignore = "needs root (connects as another uid); ./scripts/test runs it as root"]
    needs_root_peer_with_another_uid => case_other_uid;
    // Issue 15, resource bounds: each of these failed before the fix.
    huge_voice_name_is_not_echoed => case_huge_voice_name;
    pipelined_unread_refusals_do_not_grow_memory => case_pipelined_unread_refusals;
    refusals_are_logged_as_counts_not_one_line_each => case_refusals_counted;
    one_connection_cannot_fill_the_queue => case_one_connection_cannot_fill_the_queue;
    many_connections_cannot_fill_the_queue_for_another => case_many_connections_cannot_fill_the_queue;
    overloaded_hint_names_max_connections => case_overloaded_hint_names_max_connections;
}

/// A voice name as large as a frame allows.
fn huge_name() -> String {
    "V".repeat(MAX_FRAME - 256)
}

/// Regression (issue 15): `unknown_voice` echoed the whole name into the
/// reply and into the log line, so a client made the daemon repeat a
/// megabyte per request.
fn case_huge_voice_name(ctx: &Ctx) -> CaseResult {
    let log_before = ctx.d.log().len();
    let req = SynthRequest { voice: Some(huge_name()), ..synth(1, SHORT) };
    let mut s = hello(ctx.d);
    protocol::write_frame(&mut s, &Request::Synthesize(req)).map_err(|e| e.to_string())?;
    let answer = expect_error(&mut s, Some(1), ErrorCode::UnknownVoice)?;
    expect_usable(&mut s)?;
    if answer.len() > 300 {
        return Err(format!("the reply echoes {} bytes of the name", answer.len()));
    }
    // Refusals are not logged one by one; if anything was, it is clipped.
    std::thread::sleep(Duration::from_millis(300));
    let log = ctx.d.log();
    if log[log_before.min(log.len())..].contains(&"V".repeat(100)) {
        return Err("the log echoes the name".into());
    }
    Ok(answer)
}

/// Regression (issue 15): a client pipelining refused requests and reading
/// nothing made the supervisor keep every reply (each echoing its 1 MB
/// voice name, counted as 256 bytes against the backlog limit) and write a
/// log line per request: RSS 9 MB -> 1970 MB, 2 GB of log in 10 s. Now
/// replies count in real bytes and the daemon stops reading a client that
/// does not read, so the client's writes block instead.
fn case_pipelined_unread_refusals(ctx: &Ctx) -> CaseResult {
    const N: usize = 2000; // 2000 x 64 KiB: 125 MiB of voice names
    let pid = ctx.d.pid();
    let (_, peak_before) = rss_kib(pid);
    let log_before = ctx.d.log().len();
    let mut s = hello(ctx.d);
    s.set_write_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
    // Refused requests are never pending, so one id serves them all.
    let req = SynthRequest { voice: Some(huge_name()), ..synth(7, SHORT) };
    let frame = protocol::encode(&Request::Synthesize(req)).map_err(|e| e.to_string())?;
    let mut sent = 0;
    while sent < N && s.write_all(&frame).is_ok() {
        sent += 1;
    }
    // Meanwhile everyone else is served.
    match query(ctx.d, Request::Health) {
        Ok(Reply::Health { .. }) => {}
        other => return Err(format!("health during the flood: {other:.120?}")),
    }
    std::thread::sleep(Duration::from_millis(500));
    let (_, peak) = rss_kib(pid);
    drop(s);
    let grew_kib = peak.saturating_sub(peak_before);
    let logged = ctx.d.log().len().saturating_sub(log_before);
    let what = format!(
        "{sent} of {N} requests of {} KiB written before the daemon stopped reading; peak RSS +{grew_kib} KiB, log +{logged} bytes",
        frame.len() >> 10
    );
    // Bounds far above what the daemon holds (a few frames and 64 KiB of
    // replies) and far below what keeping every reply took (> 100 MiB).
    if grew_kib > 32 << 10 || logged > 256 << 10 {
        return Err(what);
    }
    Ok(what)
}

/// Regression (issue 15): every refusal was one log line (1M `overloaded`
/// refusals: 193 MB of log in 4 s). Now refusals are counted and logged as
/// one summary line per interval.
fn case_refusals_counted(ctx: &Ctx) -> CaseResult {
    const N: u64 = 300;
    let log_before = ctx.d.log().len();
    let mut s = hello(ctx.d);
    for id in 0..N {
        let req = SynthRequest { voice: Some("nobody-at-all".into()), ..synth(id, SHORT) };
        protocol::write_frame(&mut s, &Request::Synthesize(req)).map_err(|e| e.to_string())?;
    }
    for id in 0..N {
        expect_error(&mut s, Some(id), ErrorCode::UnknownVoice)?;
    }
    // The summary comes within its interval (10 s); 40 s is for a machine
    // so loaded that only a missing summary would take longer.
    let t = Instant::now();
    loop {
        let log = ctx.d.log();
        let new = &log[log_before.min(log.len())..];
        let lines = new.lines().filter(|l| l.contains("nobody-at-all") || l.contains("unknown_voice")).count();
        if lines > 3 {
            return Err(format!("{lines} log lines for {N} refusals"));
        }
        if let Some(l) = new.lines().find(|l| l.contains("refused") && l.contains("unknown_voice")) {
            return Ok(format!("{N} refusals, logged as: {l}"));
        }
        if t.elapsed() > Duration::from_secs(40) {
            return Err(format!("no summary line after {:?}", t.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What one connection's pipelined requests got: ids queued, refusals.
fn pipeline(s: &mut UnixStream, first_id: u64, n: u64, text: &str) -> Result<(Vec<u64>, Vec<String>), String> {
    for id in first_id..first_id + n {
        let req = SynthRequest { timeout_ms: Some(120_000), ..synth(id, text) };
        protocol::write_frame(s, &Request::Synthesize(req)).map_err(|e| e.to_string())?;
    }
    let (mut queued, mut refused) = (Vec::new(), Vec::new());
    while (queued.len() + refused.len()) < n as usize {
        match read(s)? {
            Some(Reply::Queued { id, .. }) => queued.push(id),
            Some(Reply::Error { id: Some(_), code: ErrorCode::Overloaded, message }) => refused.push(message),
            Some(Reply::Audio { .. }) | Some(Reply::Done { .. }) => {}
            other => return Err(format!("unexpected {other:.120?}")),
        }
    }
    Ok((queued, refused))
}

/// A second client's request after the flood: it must be queued.
fn must_be_queued(ctx: &Ctx, id: u64) -> Result<UnixStream, String> {
    let mut other = hello(ctx.d);
    protocol::write_frame(&mut other, &Request::Synthesize(SynthRequest { timeout_ms: Some(120_000), ..synth(id, SHORT) }))
        .map_err(|e| e.to_string())?;
    match read(&mut other)? {
        Some(Reply::Queued { id: q, .. }) if q == id => Ok(other),
        other => Err(format!("another client's request after the flood got {other:.160?}")),
    }
}

fn must_end_done(s: &mut UnixStream, id: u64) -> Result<(), String> {
    loop {
        match read(s)? {
            Some(Reply::Done { id: i, .. }) if i == id => return Ok(()),
            Some(Reply::Audio { .. }) | Some(Reply::Queued { .. }) => {}
            other => return Err(format!("expected done for {id}, got {other:.160?}")),
        }
    }
}

/// Regression (issue 15): one connection pipelining more long requests than
/// the queue holds took all of it, and every other client got `overloaded`.
/// Now a connection has at most max_requests_per_connection queued or
/// running, and the refusal names that setting.
fn case_one_connection_cannot_fill_the_queue(ctx: &Ctx) -> CaseResult {
    let n = QUEUE as u64 + 2;
    let mut hog = hello(ctx.d);
    let (queued, refused) = pipeline(&mut hog, 1, n, BYSTANDER)?;
    if queued.len() > PER_CONNECTION {
        return Err(format!("one connection got {} of {n} requests queued (limit {PER_CONNECTION})", queued.len()));
    }
    let Some(why) = refused.first() else { return Err("nothing refused".into()) };
    if !why.contains("max_requests_per_connection") {
        return Err(format!("the refusal does not name max_requests_per_connection: {why}"));
    }
    let mut other = must_be_queued(ctx, 1000)?;
    // Closing the hog cancels its requests; the other one runs.
    drop(hog);
    must_end_done(&mut other, 1000)?;
    Ok(format!("{} queued, {} refused: {why}; another client's request ended done", queued.len(), refused.len()))
}

/// The same across connections: clients that each stay within their limit
/// fill the queue together; a client with fewer requests waiting then takes
/// the place of the newest request of the client with the most.
fn case_many_connections_cannot_fill_the_queue(ctx: &Ctx) -> CaseResult {
    let mut hogs = Vec::new();
    let mut total = 0;
    // 5 x 4 requests: more than the queue (16) and the free worker hold.
    for h in 0..5u64 {
        let mut s = hello(ctx.d);
        let (queued, _) = pipeline(&mut s, 100 * (h + 1), PER_CONNECTION as u64, BYSTANDER)?;
        total += queued.len();
        hogs.push(s);
    }
    let mut other = must_be_queued(ctx, 2000)?;
    // The evicted request was answered on its own connection.
    let mut evicted = None;
    for s in &mut hogs {
        s.set_read_timeout(Some(Duration::from_millis(500))).map_err(|e| e.to_string())?;
        while let Ok(Some(r)) = read(s) {
            if let Reply::Error { id: Some(_), code: ErrorCode::Overloaded, message } = r {
                evicted = Some(message);
            }
        }
    }
    drop(hogs);
    must_end_done(&mut other, 2000)?;
    match evicted {
        Some(m) if m.contains("queue_capacity") => Ok(format!("{total} queued by 5 clients; evicted one: {m}")),
        other => Err(format!("no eviction naming queue_capacity was answered: {other:?}")),
    }
}

/// Regression (issue 15): when max_connections was reached, `ttsctl` told
/// the user to raise queue_capacity / workers. The daemon's message and
/// ttsctl's hint must name max_connections.
fn case_overloaded_hint_names_max_connections(ctx: &Ctx) -> CaseResult {
    let (held, mut extra) = fill_connections(ctx)?;
    let answer = expect_error(&mut extra, None, ErrorCode::Overloaded)?;
    if !answer.contains("max_connections") {
        return Err(format!("the refusal does not name max_connections: {answer}"));
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ttsctl"))
        .arg("--socket")
        .arg(&ctx.d.socket)
        .arg("health")
        .output()
        .map_err(|e| e.to_string())?;
    drop(held);
    let hint = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if out.status.success() || !hint.contains("max_connections") || hint.contains("queue_capacity") {
        return Err(format!("ttsctl health at max_connections: {} {hint:?}", out.status));
    }
    Ok(format!("{answer}; ttsctl: {hint}"))
}

/// Regression (issue 15): connections that said Hello and then nothing were
/// kept forever, so max_connections of them locked every other client out.
#[test]
fn idle_connection_is_closed() {
    let d = Daemon::start("idle_timeout_ms = 1500\nmax_connections = 6");
    d.wait_idle(2, Duration::from_secs(120));
    run_case(&d, "idle_connection_is_closed", |ctx| {
        // The bystander holds one connection; these take the other five.
        let mut idle: Vec<UnixStream> = (0..5).map(|_| hello(ctx.d)).collect();
        let mut extra = raw(ctx.d);
        let full = expect_error(&mut extra, None, ErrorCode::Overloaded)?;
        let t = Instant::now();
        for s in &mut idle {
            expect_closed(s)?;
        }
        let closed_after = t.elapsed();
        // And someone new gets in (within a bound only a daemon that never
        // closes them would exceed).
        loop {
            match query(ctx.d, Request::Health) {
                Ok(Reply::Health { .. }) => break,
                other if t.elapsed() > Duration::from_secs(30) => return Err(format!("still refused: {other:.120?}")),
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        Ok(format!("full ({full}); the 5 silent connections closed after {closed_after:?}; a new client got in"))
    });
}

/// The idle timeout counts from the end of the last request: a connection
/// whose request runs longer than idle_timeout_ms is not closed under it.
#[test]
#[cfg_attr(not(feature = "fault-injection"), ignore = "needs --features fault-injection (a slow request)")]
fn idle_timeout_spares_a_connection_with_a_request_in_flight() {
    let d = Daemon::start("idle_timeout_ms = 1000");
    d.wait_idle(2, Duration::from_secs(120));
    run_case(&d, "idle_timeout_spares_a_connection_with_a_request_in_flight", |ctx| {
        let mut c = ctx.d.client();
        let slow = SynthRequest { fault: Some(ttsd::protocol::Fault::SleepMs(2500)), ..req(SHORT) };
        let id = c.submit(slow).map_err(|e| e.to_string())?;
        // Closing the connection would have cancelled the request: done
        // means it stayed open while the request ran.
        match until_terminal(&mut c, id).last() {
            Some(Reply::Done { .. }) => Ok("a 2.5 s request on a 1 s idle timeout ended done".into()),
            other => Err(format!("the slow request ended {other:.120?}")),
        }
    });
}

/// Regression (issue 15): the supervisor wrote its log with a blocking
/// write on its only thread, so a log reader that stopped reading (`ttsd
/// 2>fifo`, reader stopped) froze health and every client after ~300
/// refused requests. Here stderr is a pipe of one page that nobody reads.
#[test]
fn stalled_log_reader_does_not_block_health() {
    // Close-on-exec, so that the daemon gets only the write end (as its
    // stderr): a daemon holding the read end too would never see EPIPE.
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: plain fcntl on a pipe we own.
    let size = unsafe { libc::fcntl(wr.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    assert!(size >= 4096, "F_SETPIPE_SZ: {}", std::io::Error::last_os_error());
    let d = Daemon::start_with("", Spawn { stderr: Some(std::process::Stdio::from(wr)), die_with_parent: false });
    d.wait_idle(2, Duration::from_secs(120));
    run_case(&d, "stalled_log_reader_does_not_block_health", |ctx| {
        // 300 refusals: a log line each, before the fix.
        let mut s = hello(ctx.d);
        for id in 0..300 {
            let req = SynthRequest { voice: Some("nobody".into()), ..synth(id, SHORT) };
            protocol::write_frame(&mut s, &Request::Synthesize(req)).map_err(|e| e.to_string())?;
        }
        for id in 0..300 {
            expect_error(&mut s, Some(id), ErrorCode::UnknownVoice)?;
        }
        // Requests that run get a line each: 20 of them are more than the
        // pipe holds, so the log writer is stuck from here on.
        let mut c = hello(ctx.d);
        for id in 0..20 {
            let line = SynthRequest { timeout_ms: Some(60_000), ..synth(id, &format!("Line {id}.")) };
            protocol::write_frame(&mut c, &Request::Synthesize(line)).map_err(|e| e.to_string())?;
            must_end_done(&mut c, id).map_err(|e| format!("request {id}: {e}"))?;
        }
        let mut queued: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int.
        unsafe { libc::ioctl(rd.as_raw_fd(), libc::FIONREAD, &mut queued) };
        if (queued as usize) < 4096 - 512 {
            return Err(format!("the pipe holds only {queued} bytes: the log reader never stalled, nothing was tested"));
        }
        let t = Instant::now();
        match query(ctx.d, Request::Health)? {
            Reply::Health { .. } => {}
            other => return Err(format!("health: {other:.120?}")),
        }
        Ok(format!("pipe full ({queued} bytes unread); health answered in {:?}", t.elapsed()))
    });
    drop(d);
    drop(rd);
}
/// Daemon bug (reported): a finite but absurd scale passes validation
/// ("finite and > 0") and reaches the engine, which sizes the output by it.
/// Regression: huge finite scales were accepted. Measured on "Hi." with an
/// 8 s deadline: length_scale 1e6 made the worker die by SIGSEGV and its
/// retry killed a second worker; length_scale f32::MAX and noise_w 1e30 kept
/// a worker in one enormous stage until it was SIGKILLed at the deadline.
/// Now `bad_request` at once, from the range check on the scales (and the
/// engine caps a sentence's frames).
#[test]
fn absurd_finite_scales_are_refused_at_once() {
    let d = Daemon::start("hang_timeout_ms = 10000");
    d.wait_idle(2, Duration::from_secs(120));
    let ctx = Ctx { d: &d };
    let mut failures = Vec::new();
    for (name, req) in [
        ("length_scale 1e6", scale(|q| q.length_scale = Some(1e6))),
        ("length_scale f32::MAX", scale(|q| q.length_scale = Some(f32::MAX))),
        ("noise_w 1e30", scale(|q| q.noise_w = Some(1e30))),
    ] {
        let req = SynthRequest { timeout_ms: Some(8000), ..req };
        let t = Instant::now();
        let r = refused(&ctx, req, ErrorCode::BadRequest);
        eprintln!("{name}: {r:?} in {:?}", t.elapsed());
        if r.is_err() || t.elapsed() > Duration::from_secs(1) {
            failures.push(format!("{name}: {r:?} after {:?}", t.elapsed()));
        }
    }
    let s = d.status();
    assert!(failures.is_empty() && s.worker_restarts == 0, "{failures:#?}; restarts {}", s.worker_restarts);
}
