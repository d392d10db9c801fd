#!/usr/bin/env python3
"""A ttsd client in Python's standard library only: a worked example of the
protocol in PROTOCOL.md (framing, the bincode encoding, the handshake), at
protocol version 2 (streamed text in, word timings and SSML marks out).

Usage:
    python3 scripts/ttsd_client.py [--socket PATH] say "Hello" out.wav
        [--voice NAME] [--speaker N] [--seed N] [--timeout-ms N]
        [--length-scale X] [--noise-scale X] [--noise-w X]
        [--ssml] [--timings FILE [--phonemes]]
    some-llm | python3 scripts/ttsd_client.py say --follow - out.wav [...]
    python3 scripts/ttsd_client.py [--socket PATH] status      # JSON
    python3 scripts/ttsd_client.py [--socket PATH] health
    (any of them: [--allow-server-uid UID]...)

say --ssml: the text is SSML (<mark name=.../>, <break time=.../>).
say --timings FILE: JSON lines, one per word {"word", "text_start",
"text_end" (character offsets in the text as sent), "start", "end" (seconds),
"start_sample", "end_sample"} and one per SSML mark {"mark", "time",
"sample"}, in the order they are spoken; --phonemes adds one per phoneme
{"phoneme", "start", "end", "start_sample", "end_sample"}. Written like the
WAV: only once the request has succeeded.
say --follow -: the text is read from standard input as it arrives and each
piece is sent at once (AppendText), so that sentences are spoken while the
rest is still being written; end of input finishes the request.

The socket is --socket, else $TTSD_SOCKET, else $XDG_RUNTIME_DIR/ttsd.sock,
else /tmp/ttsd-$UID/ttsd.sock. Exit codes: 0 ok, 1 request failed (health:
not ready), 2 daemon unreachable (or refused as unsafe: nothing was sent),
64 usage.

Who is trusted, as ttsctl does: on the default path its directory must be a
real directory of your own that nobody else can write to, and the server
(asked with SO_PEERCRED) must run as your own uid; on a path you name, as your
uid or root. --allow-server-uid UID (or TTSD_ALLOW_SERVER_UID=UID,...) trusts
another uid. say writes the WAV (and the timings) to a temporary file beside
the output and renames it into place only once the request has succeeded, so
a failure leaves an existing file as it was.

Wire format: every frame is a u32 little-endian payload length, then the
payload in bincode 2's serde encoding with little-endian fixed-width
integers: enum variant = u32 index; String = u64 byte length + UTF-8;
Vec = u64 count + items; Option = u8 0/1 + value; bool = u8; f32/f64 IEEE LE;
structs and tuples = their fields in order.
"""
import argparse
import codecs
import json
import os
import secrets
import select
import socket
import stat
import struct
import sys
import wave

PROTOCOL_VERSION = 2
MAX_FRAME = 64 * 1024 * 1024
# --follow reads standard input in pieces of at most this many bytes: far
# below the daemon's max_frame_bytes (default 1 MiB), and small enough that
# one AppendText always fits in the socket's buffer, so sending it never
# blocks for long while replies wait to be read.
FOLLOW_PIECE_BYTES = 16 * 1024

ERROR_CODES = [
    "bad_request", "unknown_voice", "overloaded", "timeout", "cancelled",
    "worker_crashed", "unavailable", "shutting_down", "frame_too_large",
    "malformed_frame", "unsupported_version", "duplicate_id", "unknown_id",
    "permission_denied", "internal",
]
HEALTH_STATES = ["ready", "degraded", "starting", "stopping"]
WORKER_STATES = ["starting", "idle", "busy", "stopping"]
VOICE_STATES = ["pending", "loaded", "failed"]
# SpeechOptions.timings (TimingLevel), by wire index.
TIMING_LEVELS = ["none", "words", "phonemes"]

# Request variant indexes (6-9: version 2).
(REQ_HELLO, REQ_SYNTHESIZE, REQ_CANCEL, REQ_STATUS, REQ_HEALTH, REQ_VOICES,
 REQ_SYNTHESIZE_WITH, REQ_OPEN_TEXT, REQ_APPEND_TEXT, REQ_FINISH_TEXT) = range(10)
# Reply variant indexes (8: version 2).
(REP_HELLO_OK, REP_QUEUED, REP_AUDIO, REP_DONE, REP_ERROR, REP_STATUS,
 REP_HEALTH, REP_VOICES, REP_TIMINGS) = range(9)


class TtsdError(Exception):
    """The daemon answered with an error code."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Refused(Exception):
    """The socket or its server is not trusted; nothing was sent."""


# --- encoding -------------------------------------------------------------

def u8(v): return struct.pack("<B", v)
def u32(v): return struct.pack("<I", v)
def u64(v): return struct.pack("<Q", v)
def f32(v): return struct.pack("<f", v)
def string(s):
    b = s.encode("utf-8")
    return u64(len(b)) + b
def option(v, enc): return u8(0) if v is None else u8(1) + enc(v)


def hello(client="ttsd_client.py", version=PROTOCOL_VERSION):
    return u32(REQ_HELLO) + u32(version) + string(client)


def synth_request(req_id, text, voice=None, speaker=None, length_scale=None,
                  noise_scale=None, noise_w=None, seed=None, timeout_ms=None,
                  stream=True):
    """A SynthRequest struct (no variant tag) for Input::Text(text)."""
    return (u64(req_id)
            + u32(0) + string(text)          # Input::Text
            + option(voice, string) + option(speaker, u32)
            + option(length_scale, f32) + option(noise_scale, f32)
            + option(noise_w, f32) + option(seed, u64)
            + option(timeout_ms, u64) + u8(1 if stream else 0)
            + u8(0))                          # fault: None


def synthesize(req_id, text, **opts):
    """Request::Synthesize (version 1 and 2); opts as synth_request's."""
    return u32(REQ_SYNTHESIZE) + synth_request(req_id, text, **opts)


def timing_level(timings):
    """A TimingLevel index from a name ("none", "words", "phonemes"), an
    index, or None (none)."""
    if timings is None:
        return 0
    if isinstance(timings, int) and 0 <= timings < len(TIMING_LEVELS):
        return timings
    if timings in TIMING_LEVELS:
        return TIMING_LEVELS.index(timings)
    raise ValueError(f"timings must be one of {', '.join(TIMING_LEVELS)}, "
                     f"not {timings!r}")


def speech_options(timings=None, ssml=False):
    """SpeechOptions (version 2): timings (TimingLevel), ssml (bool)."""
    return u32(timing_level(timings)) + u8(1 if ssml else 0)


def synthesize_with(req_id, text, timings=None, ssml=False, **opts):
    """Request::SynthesizeWith (version 2): a SynthRequest and SpeechOptions."""
    return (u32(REQ_SYNTHESIZE_WITH) + synth_request(req_id, text, **opts)
            + speech_options(timings, ssml))


def open_text(req_id, text="", timings=None, ssml=False, **opts):
    """Request::OpenText (version 2): opens a streamed text whose first
    piece is `text` (may be empty); more with append_text, then finish_text."""
    return (u32(REQ_OPEN_TEXT) + synth_request(req_id, text, **opts)
            + speech_options(timings, ssml))


def append_text(req_id, text):
    """Request::AppendText (version 2): the next piece, of any size."""
    return u32(REQ_APPEND_TEXT) + u64(req_id) + string(text)


def finish_text(req_id):
    """Request::FinishText (version 2): no more pieces."""
    return u32(REQ_FINISH_TEXT) + u64(req_id)


# --- decoding -------------------------------------------------------------

class Reader:
    def __init__(self, buf):
        self.buf, self.pos = buf, 0

    def take(self, n):
        if self.pos + n > len(self.buf):
            raise ValueError("truncated payload")
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b

    def unpack(self, fmt):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def u8(self): return self.unpack("<B")
    def u32(self): return self.unpack("<I")
    def u64(self): return self.unpack("<Q")
    def f64(self): return self.unpack("<d")
    def bool(self): return self.u8() != 0
    def string(self): return self.take(self.u64()).decode("utf-8")
    def option(self, dec): return dec() if self.u8() else None
    def vec(self, dec): return [dec() for _ in range(self.u64())]
    def name(self, names): return names[self.u32()]


def voice_status(r):
    name, path, state = r.string(), r.string(), r.name(VOICE_STATES)

    def desc():
        return {"language": r.string(), "quality": r.string(),
                "sample_rate": r.u32(), "num_speakers": r.u32(),
                "num_symbols": r.u32()}
    info = r.option(desc)
    return {"name": name, "path": path, "state": state, "info": info,
            "error": r.option(r.string)}


def worker_status(r):
    return {"slot": r.u32(), "pid": r.u32(), "state": r.name(WORKER_STATES),
            "retiring": r.bool(), "jobs_done": r.u64(), "restarts": r.u64(),
            "rss_bytes": r.u64(), "heartbeat_age_ms": r.u64(),
            "uptime_ms": r.u64(), "current_request": r.option(r.u64)}


def status_reply(r):
    s = {"server_version": r.string(), "pid": r.u32(), "uptime_ms": r.u64(),
         "state": r.name(HEALTH_STATES), "degraded_reason": r.option(r.string),
         "queue_depth": r.u32(), "queue_capacity": r.u32(),
         "connections": r.u32(), "workers_configured": r.u32(),
         "workers": r.vec(lambda: worker_status(r)),
         "worker_restarts": r.u64(), "worker_recycles": r.u64()}
    s["totals"] = {"done": r.u64(),
                   "errors": r.vec(lambda: [r.name(ERROR_CODES), r.u64()])}
    s["voices"] = r.vec(lambda: voice_status(r))
    return s


def word_timing(r):
    return {"text_start": r.u32(), "text_end": r.u32(), "word": r.string(),
            "start": r.u64(), "end": r.u64()}


def phoneme_timing(r):
    return {"phoneme": r.string(), "start": r.u64(), "end": r.u64()}


def mark_timing(r):
    return {"name": r.string(), "sample": r.u64()}


def decode_reply(payload):
    r = Reader(payload)
    tag = r.u32()
    if tag == REP_HELLO_OK:
        out = {"type": "hello_ok", "version": r.u32(), "server": r.string()}
    elif tag == REP_QUEUED:
        out = {"type": "queued", "id": r.u64(), "position": r.u32()}
    elif tag == REP_AUDIO:
        req_id, seq, rate = r.u64(), r.u32(), r.u32()
        n = r.u64()
        out = {"type": "audio", "id": req_id, "seq": seq, "sample_rate": rate,
               "pcm": r.take(2 * n)}   # n samples of s16le, kept as bytes
    elif tag == REP_DONE:
        out = {"type": "done", "id": r.u64(), "audio_seconds": r.f64(),
               "queue_ms": r.u64(), "synth_ms": r.u64(),
               "worker_pid": r.u32(), "retried": r.bool()}
    elif tag == REP_ERROR:
        out = {"type": "error", "id": r.option(r.u64),
               "code": r.name(ERROR_CODES), "message": r.string()}
    elif tag == REP_STATUS:
        out = {"type": "status", "status": status_reply(r)}
    elif tag == REP_HEALTH:
        out = {"type": "health", "state": r.name(HEALTH_STATES),
               "reason": r.option(r.string)}
    elif tag == REP_VOICES:
        out = {"type": "voices", "default_voice": r.string(),
               "voices": r.vec(lambda: voice_status(r))}
    elif tag == REP_TIMINGS:
        out = {"type": "timings", "id": r.u64(),
               "words": r.vec(lambda: word_timing(r)),
               "phonemes": r.vec(lambda: phoneme_timing(r)),
               "marks": r.vec(lambda: mark_timing(r))}
    else:
        raise ValueError(f"unknown reply tag {tag}")
    if r.pos != len(payload):
        raise ValueError("trailing bytes in reply")
    return out


# --- connection -----------------------------------------------------------

# --- who to trust ---------------------------------------------------------

class Trust:
    """Which server uids to accept: on the default path only our own; on a
    named path our own or root; plus `allowed` either way."""

    def __init__(self, default_path=False, allowed=()):
        self.own_uid = os.geteuid()
        self.default_path = default_path
        self.allowed = list(allowed)

    def accepts(self, uid):
        return (uid == self.own_uid or (uid == 0 and not self.default_path)
                or uid in self.allowed)

    def describe(self):
        if self.default_path:
            s = (f"on the default path only a ttsd of your own uid "
                 f"({self.own_uid}) is trusted")
        else:
            s = f"only a ttsd of your own uid ({self.own_uid}) or root is trusted"
        if self.allowed:
            s += f" (and uids {', '.join(map(str, self.allowed))} as allowed)"
        return s


def peer_uid(sock):
    """The uid of the process serving `sock` (from when it listened)."""
    if hasattr(socket, "SO_PEERCRED"):
        fmt = "=iII"   # struct ucred: pid, uid, gid
        data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                               struct.calcsize(fmt))
        return struct.unpack(fmt, data)[1]
    # macOS and the BSDs: LOCAL_PEERCRED (level SOL_LOCAL = 0, option 1)
    # gives a struct xucred: u_int version, uid_t uid, ...
    data = sock.getsockopt(0, 1, 76)
    return struct.unpack_from("=II", data)[1]


def check_default_dir(path, follow):
    """The default socket's directory must be ours: a real directory (the
    /tmp fallback is not followed if it is a link), owned by us, writable by
    nobody else. A missing one passes: connecting then says "not running"."""
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise Refused(f"{path} is a symbolic link, not a directory (another "
                      "user may have planted it): remove it, or name the "
                      "socket with --socket")
    if not stat.S_ISDIR(st.st_mode):
        raise Refused(f"{path} is not a directory")
    if st.st_uid != os.geteuid():
        raise Refused(f"{path} is owned by uid {st.st_uid}, not by uid "
                      f"{os.geteuid()}: another user may control it (remove "
                      "it as root, or name the socket with --socket)")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        raise Refused(f"{path} has mode {mode:04o}, but the default socket's "
                      "directory must not be writable by anyone else")


class Connection:
    def __init__(self, path, timeout=60.0, trust=None, version=PROTOCOL_VERSION):
        """Connect to `path`, check the server's uid against `trust`
        (default: a named path's, our uid or root), do the handshake in
        protocol `version` (1 allows only version 1 requests)."""
        trust = trust or Trust()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        uid = peer_uid(self.sock)
        if not trust.accepts(uid):
            self.sock.close()
            raise Refused(f"it is served by uid {uid}, and {trust.describe()} "
                          f"(if you trust uid {uid}, pass --allow-server-uid "
                          f"{uid} or set TTSD_ALLOW_SERVER_UID={uid})")
        self.send(hello(version=version))
        r = self.recv()
        if r["type"] == "error":
            if r["code"] == "unsupported_version":
                raise TtsdError(r["code"], f"{r['message']} (this client speaks "
                                f"protocol version {version}: the daemon is "
                                "probably older)")
            raise TtsdError(r["code"], r["message"])
        if r["type"] != "hello_ok":
            raise ValueError(f"unexpected handshake reply {r['type']}")
        # HelloOk is in the version we asked for; anything else is not ttsd
        # speaking our encoding, and every later frame would be misread.
        if r["version"] != version:
            raise ValueError(f"ttsd answered the handshake for protocol version "
                             f"{r['version']}, not {version}")
        self.version = version
        self.server = r["server"]
        self.next_id = 1

    def send(self, payload):
        self.sock.sendall(u32(len(payload)) + payload)

    def _exact(self, n):
        chunks = []
        while n:
            b = self.sock.recv(min(n, 1 << 20))
            if not b:
                raise ConnectionError("ttsd closed the connection")
            chunks.append(b)
            n -= len(b)
        return b"".join(chunks)

    def recv(self):
        (n,) = struct.unpack("<I", self._exact(4))
        if n > MAX_FRAME:
            raise ValueError(f"frame of {n} bytes is too large")
        return decode_reply(self._exact(n))

    def query(self, tag, want):
        self.send(u32(tag))
        while True:
            r = self.recv()
            if r["type"] == "error":
                raise TtsdError(r["code"], r["message"])
            if r["type"] == want:
                return r

    def _new_id(self):
        req_id = self.next_id
        self.next_id += 1
        return req_id

    def _step(self, req_id, on_audio, on_timings):
        """Read one reply and hand it on: returns Done when request `req_id`
        has succeeded, raises TtsdError for its Error (or one about the
        connection), else None."""
        r = self.recv()
        if r.get("id") not in (req_id, None):
            return None
        if r["type"] == "audio":
            on_audio(r["sample_rate"], r["pcm"])
        elif r["type"] == "timings":
            if on_timings is not None:
                on_timings(r)
        elif r["type"] == "done":
            return r
        elif r["type"] == "error":
            raise TtsdError(r["code"], r["message"])
        return None

    def _until_done(self, req_id, on_audio, on_timings):
        while True:
            done = self._step(req_id, on_audio, on_timings)
            if done is not None:
                return done

    def say(self, text, on_audio, on_timings=None, timings=None, ssml=False,
            **opts):
        """Synthesize; on_audio(sample_rate, pcm_bytes) per chunk,
        on_timings(timings_reply) per sentence (with timings "words" or
        "phonemes", or SSML marks); returns Done. Without timings or ssml
        this is a version 1 Synthesize."""
        req_id = self._new_id()
        if timing_level(timings) == 0 and not ssml:
            self.send(synthesize(req_id, text, **opts))
        else:
            self.send(synthesize_with(req_id, text, timings, ssml, **opts))
        return self._until_done(req_id, on_audio, on_timings)

    def follow(self, fd, on_audio, on_timings=None, timings=None, ssml=False,
               **opts):
        """Like say, but the text is read from file descriptor `fd` as it
        arrives, until end of file: each piece os.read returns is sent as it
        is (AppendText; a character cut between two reads waits for its
        rest), so the daemon speaks each sentence as soon as it is complete.
        Replies are read while waiting for input: a daemon whose replies
        go unread stops reading, and closes a connection it cannot write to."""
        req_id = self._new_id()
        self.send(open_text(req_id, "", timings, ssml, **opts))
        utf8 = codecs.getincrementaldecoder("utf-8")()
        while True:
            # select, not epoll: fd may be a regular file (always readable).
            ready, _, _ = select.select([self.sock, fd], [], [])
            if self.sock in ready:
                # Only an Error (raised) should end it before FinishText.
                done = self._step(req_id, on_audio, on_timings)
                if done is not None:
                    return done
                continue
            chunk = os.read(fd, FOLLOW_PIECE_BYTES)
            try:
                piece = utf8.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                raise ValueError(f"the input is not UTF-8 text ({e})") from None
            if piece:
                self.send(append_text(req_id, piece))
            if not chunk:
                self.send(finish_text(req_id))
                return self._until_done(req_id, on_audio, on_timings)

    def close(self):
        self.sock.close()


def socket_target(explicit=None):
    """(path, default_dir, follow): default_dir is None for a named path
    (--socket, $TTSD_SOCKET); follow: whether a link there is followed
    ($XDG_RUNTIME_DIR is the user's own setting; /tmp/ttsd-$UID is not)."""
    if explicit:
        return explicit, None, False
    if os.environ.get("TTSD_SOCKET"):
        return os.environ["TTSD_SOCKET"], None, False
    if os.environ.get("XDG_RUNTIME_DIR"):
        d = os.environ["XDG_RUNTIME_DIR"]
        return os.path.join(d, "ttsd.sock"), d, True
    d = f"/tmp/ttsd-{os.getuid()}"
    return os.path.join(d, "ttsd.sock"), d, False


def default_socket():
    return socket_target()[0]


def connect(explicit=None, allowed=(), timeout=60.0, version=PROTOCOL_VERSION):
    """Connect as ttsctl does: check the default path's directory, then the
    server's uid. Raises Refused before sending anything."""
    path, default_dir, follow = socket_target(explicit)
    if default_dir is not None:
        check_default_dir(default_dir, follow)
    return Connection(path, timeout, Trust(default_dir is not None, allowed),
                      version)


class Output:
    """An output file that appears only once complete: audio goes to a
    temporary file beside it (created exclusively) that replaces it on
    commit(); discard() removes only that temporary file. Devices and fifos
    are written in place, never created, removed or replaced."""

    def __init__(self, path):
        self.temp = None
        target, mode = path, None
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISLNK(st.st_mode):
            try:
                st = os.stat(path)
            except FileNotFoundError:
                raise OSError(f"{path} is a symbolic link to a file that "
                              "does not exist") from None
            if stat.S_ISREG(st.st_mode):
                target = os.path.realpath(path)
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(f"{path} is a directory")
        if st is not None and not stat.S_ISREG(st.st_mode):
            self.file = os.fdopen(os.open(path, os.O_WRONLY | os.O_NOCTTY), "wb")
            return
        if st is not None:
            if not os.access(target, os.W_OK):
                raise PermissionError(f"{target}: permission denied")
            mode = stat.S_IMODE(st.st_mode) & 0o777
        d, name = os.path.split(target)
        flags = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                 | getattr(os, "O_NOFOLLOW", 0))
        for _ in range(64):
            temp = os.path.join(d or ".", f".{name}.{os.getpid()}-{secrets.token_hex(6)}.tmp")
            try:
                fd = os.open(temp, flags, 0o666)
                break
            except FileExistsError:
                continue
        else:
            raise FileExistsError("no free temporary file name")
        if mode is not None:
            os.fchmod(fd, mode)   # keep a private file private
        self.temp, self.target = temp, target
        self.file = os.fdopen(fd, "wb")

    def commit(self):
        self.file.flush()
        if self.temp is not None:
            os.fsync(self.file.fileno())
        self.file.close()
        if self.temp is not None:
            os.replace(self.temp, self.target)
            self.temp = None

    def discard(self):
        self.file.close()
        if self.temp is not None:
            os.unlink(self.temp)
            self.temp = None


def timing_lines(replies, rate):
    """The JSON lines of --timings for a request's Timings replies: per
    word, mark and phoneme, in the order spoken (a mark before the word it
    falls on), with times in seconds at `rate` and in samples."""
    secs = lambda n: round(n / rate, 6)
    for t in replies:
        items = ([(m["sample"], 0, {"mark": m["name"], "time": secs(m["sample"]),
                                    "sample": m["sample"]}) for m in t["marks"]]
                 + [(w["start"], 1, {"word": w["word"], "text_start": w["text_start"],
                                     "text_end": w["text_end"], "start": secs(w["start"]),
                                     "end": secs(w["end"]), "start_sample": w["start"],
                                     "end_sample": w["end"]}) for w in t["words"]]
                 + [(p["start"], 2, {"phoneme": p["phoneme"], "start": secs(p["start"]),
                                     "end": secs(p["end"]), "start_sample": p["start"],
                                     "end_sample": p["end"]}) for p in t["phonemes"]])
        items.sort(key=lambda i: i[:2])   # stable: words keep their order
        for _, _, line in items:
            yield json.dumps(line, ensure_ascii=False)


def say_to_wav(conn, text, path, timings_path=None, follow=None, **opts):
    """Write the speech for text to a mono 16-bit WAV file; returns Done.
    An existing file at `path` is replaced only once all the audio is in.
    timings_path: also write the word timings (and marks; with
    timings="phonemes" the phonemes) there as JSON lines, the same way.
    follow: a file descriptor to read the text from as it arrives (Connection.
    follow) instead of `text`. opts: SynthRequest fields, timings, ssml."""
    if timings_path is not None and timing_level(opts.get("timings")) == 0:
        opts["timings"] = "words"
    out = {"wav": None, "file": None, "rate": None}
    timings = []

    def on_audio(rate, pcm):
        if out["wav"] is None:
            out["file"] = Output(path)
            out["wav"] = wave.open(out["file"].file, "wb")
            out["wav"].setnchannels(1)
            out["wav"].setsampwidth(2)
            out["wav"].setframerate(rate)
            out["rate"] = rate
        elif rate != out["rate"]:
            raise ValueError(f"the sample rate changed from {out['rate']} to "
                             f"{rate} within one reply")
        out["wav"].writeframes(pcm)   # wave writes s16 little endian as is

    tfile = None
    try:
        if follow is not None:
            done = conn.follow(follow, on_audio, timings.append, **opts)
        else:
            done = conn.say(text, on_audio, timings.append, **opts)
        if out["wav"] is None:
            raise TtsdError("internal", "no audio received")
        if timings_path is not None:
            # Timings come before their audio, so seconds only once the
            # sample rate is known: they are written at the end.
            tfile = Output(timings_path)
            for line in timing_lines(timings, out["rate"]):
                tfile.file.write(line.encode("utf-8") + b"\n")
        out["wav"].close()
        out["file"].commit()
        if tfile is not None:
            tfile.commit()
    except BaseException:
        if out["file"] is not None:
            out["file"].discard()
        if tfile is not None:
            tfile.discard()
        raise
    return done


def main(argv=None):
    p = argparse.ArgumentParser(description="ttsd client (Python stdlib only)")
    p.add_argument("--socket", default=None, help="ttsd's socket")
    p.add_argument("--allow-server-uid", type=int, action="append", default=[],
                   metavar="UID", help="also trust a ttsd running as UID")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("say", help="speak TEXT into a WAV file")
    s.add_argument("text", help="what to say; - with --follow: standard input")
    s.add_argument("output")
    s.add_argument("--voice")
    s.add_argument("--speaker", type=int)
    s.add_argument("--seed", type=int)
    s.add_argument("--timeout-ms", type=int,
                   help="deadline; with --follow, for each piece of input")
    s.add_argument("--length-scale", type=float, metavar="X",
                   help="speaking rate (> 1: slower); default: the voice's")
    s.add_argument("--noise-scale", type=float, metavar="X",
                   help="voice variation (0: none); default: the voice's")
    s.add_argument("--noise-w", type=float, metavar="X",
                   help="timing variation (0: none); default: the voice's")
    s.add_argument("--ssml", action="store_true", help="TEXT is SSML")
    s.add_argument("--timings", metavar="FILE",
                   help="write word (and SSML mark) timings to FILE as JSON lines")
    s.add_argument("--phonemes", action="store_true",
                   help="with --timings: every phoneme's timing too")
    s.add_argument("--follow", action="store_true",
                   help="read the text from standard input as it is written "
                        "(TEXT must be -) and speak each sentence as it is complete")
    sub.add_parser("status", help="print the daemon's status as JSON")
    sub.add_parser("health", help="exit 0 if ready, 1 if not, 2 if unreachable")
    try:
        args = p.parse_args(argv)
        if args.cmd == "say" and args.follow and args.text != "-":
            s.error("say --follow reads the text from standard input: "
                    "give - as TEXT")
        if args.cmd == "say" and args.phonemes and not args.timings:
            s.error("say --phonemes goes with --timings FILE")
    except SystemExit as e:
        return 0 if e.code == 0 else 64
    path = socket_target(args.socket)[0]
    allowed = list(args.allow_server_uid)
    try:
        allowed += [int(u) for u in
                    os.environ.get("TTSD_ALLOW_SERVER_UID", "").split(",") if u.strip()]
    except ValueError:
        print("ttsd_client: TTSD_ALLOW_SERVER_UID must be uids separated by commas",
              file=sys.stderr)
        return 64
    try:
        conn = connect(args.socket, allowed)
    except Refused as e:
        print(f"ttsd_client: refusing ttsd at {path}: {e}; nothing was sent",
              file=sys.stderr)
        return 2
    except (FileNotFoundError, ConnectionRefusedError):
        print(f"ttsd_client: ttsd is not running at {path} (start it with "
              "`./scripts/run` or `systemctl --user start ttsd`)", file=sys.stderr)
        return 2
    except PermissionError:
        print(f"ttsd_client: permission denied on {path}", file=sys.stderr)
        return 2
    except TtsdError as e:
        print(f"ttsd_client: handshake refused: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:
        # Closed or garbled during the handshake: not a ttsd we can talk to.
        print(f"ttsd_client: handshake with {path} failed: {e}", file=sys.stderr)
        return 2
    try:
        if args.cmd == "say":
            opts = {k: v for k, v in [("voice", args.voice), ("speaker", args.speaker),
                                      ("seed", args.seed), ("timeout_ms", args.timeout_ms),
                                      ("length_scale", args.length_scale),
                                      ("noise_scale", args.noise_scale),
                                      ("noise_w", args.noise_w)]
                    if v is not None}
            if args.ssml:
                opts["ssml"] = True
            if args.timings:
                opts["timings"] = "phonemes" if args.phonemes else "words"
            done = say_to_wav(conn, None if args.follow else args.text, args.output,
                              timings_path=args.timings,
                              follow=sys.stdin.fileno() if args.follow else None,
                              **opts)
            print(f"{args.output}: {done['audio_seconds']:.2f} s of audio "
                  f"(worker {done['worker_pid']})", file=sys.stderr)
        elif args.cmd == "status":
            st = conn.query(REQ_STATUS, "status")["status"]
            print(json.dumps(st, indent=2))
        elif args.cmd == "health":
            h = conn.query(REQ_HEALTH, "health")
            print(h["state"] + (f": {h['reason']}" if h["reason"] else ""))
            return 0 if h["state"] == "ready" else 1
    except TtsdError as e:
        print(f"ttsd_client: {e}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:
        print(f"ttsd_client: {e}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
