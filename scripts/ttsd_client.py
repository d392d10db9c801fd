#!/usr/bin/env python3
"""A ttsd client in Python's standard library only: a worked example of the
protocol in PROTOCOL.md (framing, the bincode encoding, the handshake).

Usage:
    python3 scripts/ttsd_client.py [--socket PATH] say "Hello" out.wav
        [--voice NAME] [--speaker N] [--seed N] [--timeout-ms N]
    python3 scripts/ttsd_client.py [--socket PATH] status      # JSON
    python3 scripts/ttsd_client.py [--socket PATH] health
    (any of them: [--allow-server-uid UID]...)

The socket is --socket, else $TTSD_SOCKET, else $XDG_RUNTIME_DIR/ttsd.sock,
else /tmp/ttsd-$UID/ttsd.sock. Exit codes: 0 ok, 1 request failed (health:
not ready), 2 daemon unreachable (or refused as unsafe: nothing was sent),
64 usage.

Who is trusted, as ttsctl does: on the default path its directory must be a
real directory of your own that nobody else can write to, and the server
(asked with SO_PEERCRED) must run as your own uid; on a path you name, as your
uid or root. --allow-server-uid UID (or TTSD_ALLOW_SERVER_UID=UID,...) trusts
another uid. say writes the WAV to a temporary file beside the output and
renames it into place only once the request has succeeded, so a failure
leaves an existing file as it was.

Wire format: every frame is a u32 little-endian payload length, then the
payload in bincode 2's serde encoding with little-endian fixed-width
integers: enum variant = u32 index; String = u64 byte length + UTF-8;
Vec = u64 count + items; Option = u8 0/1 + value; bool = u8; f32/f64 IEEE LE;
structs and tuples = their fields in order.
"""
import argparse
import json
import os
import secrets
import socket
import stat
import struct
import sys
import wave

PROTOCOL_VERSION = 1
MAX_FRAME = 64 * 1024 * 1024

ERROR_CODES = [
    "bad_request", "unknown_voice", "overloaded", "timeout", "cancelled",
    "worker_crashed", "unavailable", "shutting_down", "frame_too_large",
    "malformed_frame", "unsupported_version", "duplicate_id", "unknown_id",
    "permission_denied", "internal",
]
HEALTH_STATES = ["ready", "degraded", "starting", "stopping"]
WORKER_STATES = ["starting", "idle", "busy", "stopping"]
VOICE_STATES = ["pending", "loaded", "failed"]

# Request variant indexes.
REQ_HELLO, REQ_SYNTHESIZE, REQ_CANCEL, REQ_STATUS, REQ_HEALTH, REQ_VOICES = range(6)
# Reply variant indexes.
(REP_HELLO_OK, REP_QUEUED, REP_AUDIO, REP_DONE, REP_ERROR, REP_STATUS,
 REP_HEALTH, REP_VOICES) = range(8)


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


def hello(client="ttsd_client.py"):
    return u32(REQ_HELLO) + u32(PROTOCOL_VERSION) + string(client)


def synthesize(req_id, text, voice=None, speaker=None, length_scale=None,
               noise_scale=None, noise_w=None, seed=None, timeout_ms=None,
               stream=True):
    return (u32(REQ_SYNTHESIZE) + u64(req_id)
            + u32(0) + string(text)          # Input::Text
            + option(voice, string) + option(speaker, u32)
            + option(length_scale, f32) + option(noise_scale, f32)
            + option(noise_w, f32) + option(seed, u64)
            + option(timeout_ms, u64) + u8(1 if stream else 0)
            + u8(0))                          # fault: None


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
    def __init__(self, path, timeout=60.0, trust=None):
        """Connect to `path`, check the server's uid against `trust`
        (default: a named path's, our uid or root), do the handshake."""
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
        self.send(hello())
        r = self.recv()
        if r["type"] == "error":
            raise TtsdError(r["code"], r["message"])
        if r["type"] != "hello_ok":
            raise ValueError(f"unexpected handshake reply {r['type']}")
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

    def say(self, text, on_audio, **opts):
        """Synthesize; on_audio(sample_rate, pcm_bytes) per chunk; returns Done."""
        req_id = self.next_id
        self.next_id += 1
        self.send(synthesize(req_id, text, **opts))
        while True:
            r = self.recv()
            if r.get("id") not in (req_id, None):
                continue
            if r["type"] == "audio":
                on_audio(r["sample_rate"], r["pcm"])
            elif r["type"] == "done":
                return r
            elif r["type"] == "error":
                raise TtsdError(r["code"], r["message"])

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


def connect(explicit=None, allowed=(), timeout=60.0):
    """Connect as ttsctl does: check the default path's directory, then the
    server's uid. Raises Refused before sending anything."""
    path, default_dir, follow = socket_target(explicit)
    if default_dir is not None:
        check_default_dir(default_dir, follow)
    return Connection(path, timeout, Trust(default_dir is not None, allowed))


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


def say_to_wav(conn, text, path, **opts):
    """Write the speech for text to a mono 16-bit WAV file; returns Done.
    An existing file at `path` is replaced only once all the audio is in."""
    out = {"wav": None, "file": None}

    def on_audio(rate, pcm):
        if out["wav"] is None:
            out["file"] = Output(path)
            out["wav"] = wave.open(out["file"].file, "wb")
            out["wav"].setnchannels(1)
            out["wav"].setsampwidth(2)
            out["wav"].setframerate(rate)
        out["wav"].writeframes(pcm)   # wave writes s16 little endian as is

    try:
        done = conn.say(text, on_audio, **opts)
        if out["wav"] is None:
            raise TtsdError("internal", "no audio received")
        out["wav"].close()
        out["file"].commit()
    except BaseException:
        if out["file"] is not None:
            out["file"].discard()
        raise
    return done


def main(argv=None):
    p = argparse.ArgumentParser(description="ttsd client (Python stdlib only)")
    p.add_argument("--socket", default=None, help="ttsd's socket")
    p.add_argument("--allow-server-uid", type=int, action="append", default=[],
                   metavar="UID", help="also trust a ttsd running as UID")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("say", help="speak TEXT into a WAV file")
    s.add_argument("text")
    s.add_argument("output")
    s.add_argument("--voice")
    s.add_argument("--speaker", type=int)
    s.add_argument("--seed", type=int)
    s.add_argument("--timeout-ms", type=int)
    sub.add_parser("status", help="print the daemon's status as JSON")
    sub.add_parser("health", help="exit 0 if ready, 1 if not, 2 if unreachable")
    try:
        args = p.parse_args(argv)
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
    try:
        if args.cmd == "say":
            opts = {k: v for k, v in [("voice", args.voice), ("speaker", args.speaker),
                                      ("seed", args.seed), ("timeout_ms", args.timeout_ms)]
                    if v is not None}
            done = say_to_wav(conn, args.text, args.output, **opts)
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
