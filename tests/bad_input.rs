//! The bad-input suite: raw byte-level and protocol-level attacks, each with
//! the error code PROTOCOL.md gives it, each run while a valid request is in
//! flight on another connection; that request must still end `done`.
//!
//! One daemon for the whole file (2 workers, max_text_chars = 100,
//! max_connections = 8, max_frame_bytes = 64 KiB, hang_timeout_ms = 10 s) and one #[test] that runs
//! every case in turn and prints a line per case, so a failure names its
//! case and the others still run.
mod common;

use common::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
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

fn raw(d: &Daemon) -> UnixStream {
    let s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
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

fn case_too_many_connections(ctx: &Ctx) -> CaseResult {
    // Fill up to the limit (the bystander holds one), then one more.
    let open = Client::connect(&ctx.d.socket).map_err(|e| e.to_string())?.status().map_err(|e| e.to_string())?.connections
        as usize;
    let mut held: Vec<UnixStream> = Vec::new();
    for _ in open.saturating_sub(1)..MAX_CONNECTIONS {
        held.push(hello(ctx.d));
    }
    let mut extra = raw(ctx.d);
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

/// A peer with another uid: as root, a forked child that setuid()s to
/// `nobody` connects and must get permission_denied. Otherwise the policy
/// check itself is tested (and the output says so).
fn case_other_uid(ctx: &Ctx) -> CaseResult {
    if !nix::unistd::geteuid().is_root() {
        let p = ttsd::supervisor::socket::PeerPolicy { own_uid: 1000, uids: vec![], gids: vec![] };
        return if !p.allows(65534, 65534) && p.allows(1000, 1000) {
            Ok("not root: checked PeerPolicy only (no second user to connect as)".into())
        } else {
            Err("PeerPolicy lets another uid in".into())
        };
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

fn cases() -> Vec<(&'static str, Box<dyn Fn(&Ctx) -> CaseResult>)> {
    use ErrorCode::*;
    let r = |req: SynthRequest, code: ErrorCode| -> Box<dyn Fn(&Ctx) -> CaseResult> {
        Box::new(move |ctx| refused(ctx, req.clone(), code))
    };
    let ids = |v: Vec<i64>| SynthRequest { id: 1, input: Input::PhonemeIds(v), ..SynthRequest::text("") };
    vec![
        ("empty text", r(synth(1, ""), BadRequest)),
        ("whitespace-only text", r(synth(1, " \t\n\u{3000} "), BadRequest)),
        ("text over max_text_chars (bytes and characters)", Box::new(case_text_over_limit)),
        ("invalid UTF-8 in the text field", Box::new(case_invalid_utf8)),
        ("NUL byte inside the text (read as a space)", Box::new(case_nul_inside)),
        ("text of NUL bytes only", r(synth(1, "\0\0\0"), BadRequest)),
        ("unknown voice", r(SynthRequest { voice: Some("nobody".into()), ..synth(1, SHORT) }, UnknownVoice)),
        ("speaker out of range", r(scale(|q| q.speaker = Some(1)), BadRequest)),
        ("speaker u32::MAX", r(scale(|q| q.speaker = Some(u32::MAX)), BadRequest)),
        ("negative length_scale", r(scale(|q| q.length_scale = Some(-1.0)), BadRequest)),
        ("zero length_scale", r(scale(|q| q.length_scale = Some(0.0)), BadRequest)),
        ("NaN length_scale", r(scale(|q| q.length_scale = Some(f32::NAN)), BadRequest)),
        ("infinite length_scale", r(scale(|q| q.length_scale = Some(f32::INFINITY)), BadRequest)),
        ("negative noise_scale", r(scale(|q| q.noise_scale = Some(-0.5)), BadRequest)),
        ("infinite noise_scale", r(scale(|q| q.noise_scale = Some(f32::INFINITY)), BadRequest)),
        ("NaN noise_w", r(scale(|q| q.noise_w = Some(f32::NAN)), BadRequest)),
        ("negative noise_w", r(scale(|q| q.noise_w = Some(-1.0)), BadRequest)),
        ("zero timeout_ms", r(scale(|q| q.timeout_ms = Some(0)), BadRequest)),
        ("phoneme id past the voice's symbols", r(ids(vec![1, 0, 256, 0, 2]), BadRequest)),
        ("negative phoneme id", r(ids(vec![1, -5, 2]), BadRequest)),
        ("phoneme id i64::MAX", r(ids(vec![1, i64::MAX, 2]), BadRequest)),
        ("empty phoneme list", r(ids(vec![]), BadRequest)),
        ("zero-length frame", Box::new(case_zero_length_frame)),
        ("length prefix of 4 GiB", Box::new(case_length_4gib)),
        ("length prefix one past max_frame_bytes", Box::new(case_length_over_max_frame)),
        ("truncated frame, then close", Box::new(case_truncated_then_close)),
        ("random garbage instead of Hello", Box::new(case_garbage_before_hello)),
        ("garbage payload instead of Hello", Box::new(case_garbage_payload_before_hello)),
        ("random garbage frame after Hello", Box::new(case_garbage_after_hello)),
        ("wrong protocol version", Box::new(case_wrong_version)),
        ("first frame not Hello", Box::new(case_no_hello_first)),
        ("second Hello", Box::new(case_second_hello)),
        ("unknown message kind (tag 99)", Box::new(case_unknown_message_kind)),
        ("enum tag out of range inside a field", Box::new(case_enum_tag_inside_a_field)),
        ("string length prefix of 2^60", Box::new(case_lying_string_length)),
        ("phoneme count of 2^40 in a small frame", Box::new(case_lying_phoneme_count)),
        ("trailing bytes after a message", Box::new(case_trailing_bytes)),
        ("duplicate request id", Box::new(case_duplicate_id)),
        ("cancel of an unknown id", Box::new(case_cancel_unknown)),
        ("more connections than max_connections", Box::new(case_too_many_connections)),
        ("peer with another uid", Box::new(case_other_uid)),
    ]
}

#[test]
fn bad_input_suite() {
    // hang_timeout_ms well above the engine's longest stage on a busy
    // machine: heartbeats go out between stages, and no case here hangs.
    let d = Daemon::start(&format!(
        "max_text_chars = {MAX_TEXT}\nmax_connections = {MAX_CONNECTIONS}\nmax_frame_bytes = {MAX_FRAME}\nhang_timeout_ms = 10000"
    ));
    d.wait_idle(2, Duration::from_secs(120));
    let ctx = Ctx { d: &d };
    let mut bystander = d.client();
    let mut failures = Vec::new();
    let all = cases();
    let t_all = Instant::now();
    for (i, (name, case)) in all.iter().enumerate() {
        // The valid request: accepted (Queued) before the attack starts.
        let id = bystander.submit(SynthRequest { stream: i % 2 == 0, ..req(BYSTANDER) }).unwrap();
        match bystander.recv().unwrap() {
            Reply::Queued { id: q, .. } if q == id => {}
            other => panic!("bystander: {other:?}"),
        }
        let t = Instant::now();
        let result = case(&ctx);
        let took = t.elapsed();
        let replies = until_terminal(&mut bystander, id);
        let by = match replies.last() {
            Some(Reply::Done { .. }) => Ok(()),
            other => Err(format!("the request in flight ended {other:.120?}")),
        };
        let verdict = match (&result, &by) {
            (Ok(_), Ok(())) => "ok  ",
            _ => "FAIL",
        };
        let detail = match &result {
            Ok(s) => s.clone(),
            Err(e) => e.clone(),
        };
        eprintln!("{verdict} {:2} {name} ({} ms): {detail}{}", i + 1, took.as_millis(), by.as_ref().err().map_or(String::new(), |e| format!("; {e}")));
        if result.is_err() || by.is_err() {
            failures.push(format!("{name}: {detail}{}", by.err().map_or(String::new(), |e| format!("; {e}"))));
        }
        // Whatever a case did, the daemon must still answer at once.
        let t = Instant::now();
        d.client().health().unwrap();
        assert!(t.elapsed() < Duration::from_secs(2), "health took {:?} after '{name}'", t.elapsed());
    }
    eprintln!("{} cases in {:.1} s", all.len(), t_all.elapsed().as_secs_f64());
    let s = d.status();
    assert_eq!(s.worker_restarts, 0, "a bad input cost a worker: {s:#?}");
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), all.len(), failures.join("\n"));
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
