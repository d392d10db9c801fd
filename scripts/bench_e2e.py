#!/usr/bin/env python3
"""End-to-end benchmark driver for `scripts/bench e2e`: ttsd (its native
protocol on a Unix socket) against Piper's HTTP server (piper.http_server,
POST /synthesize returning a WAV), with the same client code style for both:
a NEW connection per request, standard library only.

    bench_e2e.py run --server ttsd  --socket PATH --pid PID ... --out FILE
    bench_e2e.py run --server piper --url http://127.0.0.1:PORT --pid PID ... --out FILE
    bench_e2e.py wait-piper --url URL --pid PID [--timeout S]
    bench_e2e.py report TTSD.json PIPER.json [--json OUT]

`run` measures one server (the other is not running): a warm-up, then
sequential latency of every text (short set and long set, --reps times),
then C = 1, 2, 4, 8 concurrent clients sending short replies back to back
for --duration seconds, while a thread samples the server's process tree
(VmRSS, Pss) every 50 ms. ttsd is measured twice sequentially: whole replies
(stream=false, like Piper's WAV) and streamed (stream=true, which gives the
time to first audio). The concurrent phase uses whole replies.

Latency of a request = from just before connect() to the moment its last
audio byte has been read (ttsd: the last Audio frame; Piper: the end of the
HTTP body). Time to first audio: ttsd, the first Audio frame of a streamed
request; Piper, the first chunk of the HTTP body (it sends nothing before the
whole WAV is ready). Every reply is checked: a mono 16-bit WAV/PCM with the
voice's sample rate, non-empty, not silent; a failed request is counted and
reported, never dropped.
"""
import argparse
import array
import http.client
import io
import json
import math
import os
import resource
import socket
import struct
import sys
import threading
import time
import urllib.parse
import wave

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# Only the encoding/decoding helpers of the reference client (stable: they
# mirror PROTOCOL.md); connections are handled here.
from ttsd_client import REQ_STATUS, decode_reply, hello, synthesize, u32  # noqa: E402

CONCURRENCY = (1, 2, 4, 8)
TIMEOUT_S = 120.0
MIN_PEAK = 100  # a reply whose samples never exceed this is "silent"


def now():
    return time.perf_counter()


def pct(xs, p):
    """Nearest-rank percentile; None for no samples."""
    if not xs:
        return None
    s = sorted(xs)
    return s[max(0, math.ceil(p / 100.0 * len(s)) - 1)]


def median(xs):
    if not xs:
        return None
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def cpu_self():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def check_pcm(pcm, rate, want_rate):
    """Raises ValueError unless pcm (s16le mono bytes) is real audio at want_rate."""
    if rate != want_rate:
        raise ValueError(f"sample rate {rate}, expected {want_rate}")
    if len(pcm) < 2 or len(pcm) % 2:
        raise ValueError(f"{len(pcm)} bytes of PCM")
    a = array.array("h")
    a.frombytes(pcm)
    if sys.byteorder != "little":
        a.byteswap()
    if max(max(a), -min(a)) < MIN_PEAK:
        raise ValueError("silent audio")
    return len(a) / float(rate)


# --- ttsd: native protocol, one connection per request ----------------------

class TtsdConn:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT_S)
        self.sock.connect(path)

    def send(self, payload):
        self.sock.sendall(u32(len(payload)) + payload)

    def _exact(self, n):
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            k = self.sock.recv_into(view[got:])
            if not k:
                raise ConnectionError("ttsd closed the connection")
            got += k
        return bytes(buf)

    def recv(self):
        (n,) = struct.unpack("<I", self._exact(4))
        return decode_reply(self._exact(n))

    def handshake(self):
        self.send(hello("bench_e2e"))
        r = self.recv()
        if r["type"] != "hello_ok":
            raise RuntimeError(f"handshake: {r.get('code', r['type'])}: {r.get('message', '')}")

    def close(self):
        self.sock.close()


def ttsd_request(path, text, stream, want_rate):
    rec = {"ok": False}
    t0 = now()
    conn = None
    try:
        conn = TtsdConn(path)
        conn.handshake()
        rec["hs_ms"] = (now() - t0) * 1e3
        conn.send(synthesize(1, text, stream=stream))
        chunks, rate, t_first, t_last, expect_seq = [], None, None, None, 0
        while True:
            r = conn.recv()
            kind = r["type"]
            if kind == "queued":
                continue
            if kind == "audio":
                t_last = now()
                if t_first is None:
                    t_first = t_last
                if r["seq"] != expect_seq:
                    raise ValueError(f"audio seq {r['seq']}, expected {expect_seq}")
                expect_seq += 1
                if rate is not None and r["sample_rate"] != rate:
                    raise ValueError("sample rate changed within a reply")
                rate = r["sample_rate"]
                chunks.append(r["pcm"])
            elif kind == "done":
                if t_first is None:
                    raise ValueError("Done without audio")
                audio_s = check_pcm(b"".join(chunks), rate, want_rate)
                if abs(audio_s - r["audio_seconds"]) > 0.01:
                    raise ValueError(f"{audio_s:.3f} s received, Done says {r['audio_seconds']:.3f}")
                rec.update(ok=True, lat_ms=(t_last - t0) * 1e3, ttfa_ms=(t_first - t0) * 1e3,
                           audio_s=audio_s, queue_ms=r["queue_ms"], synth_ms=r["synth_ms"],
                           worker=r["worker_pid"], retried=r["retried"], frames=expect_seq)
                return rec
            elif kind == "error":
                raise RuntimeError(f"{r['code']}: {r['message']}")
            else:
                raise ValueError(f"unexpected reply {kind}")
    except Exception as e:  # counted, never dropped
        rec["err"] = f"{type(e).__name__}: {e}"
        rec["lat_ms"] = (now() - t0) * 1e3
        return rec
    finally:
        if conn is not None:
            conn.close()


def ttsd_status(path):
    conn = TtsdConn(path)
    try:
        conn.handshake()
        conn.send(u32(REQ_STATUS))
        while True:
            r = conn.recv()
            if r["type"] == "status":
                return r["status"]
            if r["type"] == "error":
                raise RuntimeError(f"{r['code']}: {r['message']}")
    finally:
        conn.close()


# --- Piper: HTTP, one connection per request ---------------------------------

def piper_request(url, text, want_rate):
    rec = {"ok": False}
    u = urllib.parse.urlsplit(url)
    body = json.dumps({"text": text}).encode("utf-8")
    t0 = now()
    conn = None
    try:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=TIMEOUT_S)
        conn.request("POST", "/synthesize", body=body,
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        chunks, t_first = [], None
        while True:
            b = resp.read(1 << 16)
            if not b:
                break
            if t_first is None:
                t_first = now()
            chunks.append(b)
        t_last = now()
        data = b"".join(chunks)
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {data[:200]!r}")
        if t_first is None:
            raise ValueError("empty body")
        with wave.open(io.BytesIO(data), "rb") as w:
            if w.getnchannels() != 1 or w.getsampwidth() != 2:
                raise ValueError(f"{w.getnchannels()} channels of {8 * w.getsampwidth()} bits")
            rate, n = w.getframerate(), w.getnframes()
            pcm = w.readframes(n)
        if len(pcm) != 2 * n:
            raise ValueError("WAV shorter than its header says")
        audio_s = check_pcm(pcm, rate, want_rate)
        rec.update(ok=True, lat_ms=(t_last - t0) * 1e3, ttfa_ms=(t_first - t0) * 1e3,
                   audio_s=audio_s)
        return rec
    except Exception as e:
        rec["err"] = f"{type(e).__name__}: {e}"
        rec["lat_ms"] = (now() - t0) * 1e3
        return rec
    finally:
        if conn is not None:
            conn.close()


def piper_get(url, path):
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}")
        return json.loads(data)
    finally:
        conn.close()


def pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_piper(url, pid, timeout):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if not pid_alive(pid):
            raise SystemExit(f"bench_e2e: Piper's server (pid {pid}) exited while starting")
        try:
            info = piper_get(url, "/info")
            return info
        except (OSError, RuntimeError, ValueError, http.client.HTTPException):
            time.sleep(0.1)
    raise SystemExit(f"bench_e2e: Piper's server did not answer within {timeout} s")


# --- memory of a process tree -------------------------------------------------

def tree_pids(root):
    out, i = [root], 0
    while i < len(out):
        p = out[i]
        i += 1
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                try:
                    with open(f"/proc/{p}/task/{tid}/children") as f:
                        out.extend(int(c) for c in f.read().split())
                except OSError:
                    pass
        except OSError:
            pass
    return out


def proc_kb(path, keys):
    got = {}
    try:
        with open(path) as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in keys:
                    got[k] = int(v.split()[0])
    except (OSError, ValueError):
        pass
    return got


class TreeSampler(threading.Thread):
    """Every `interval` s: the sum over the process tree of VmRSS; every
    `pss_every`-th sample also the sum of Pss (pages shared between the
    processes counted once). Pss is read from smaps_rollup, which walks the
    page tables under the process's mmap lock: costly (~10% of a core at
    50 ms for ttsd's three processes) and able to stall the server, hence
    less often. Keeps the peaks, the first sample (idle), and per process the
    largest VmHWM seen."""

    def __init__(self, root, interval=0.05, pss_every=20):
        super().__init__(daemon=True)
        self.root, self.interval, self.pss_every = root, interval, pss_every
        self.max_sample_s = 0.0
        self.stop_ev = threading.Event()
        self.peak_rss_kb = self.peak_pss_kb = 0
        self.idle = None
        self.hwm_kb = {}
        self.samples, self.max_gap_s, self.max_procs, self.cpu_s = 0, 0.0, 0, 0.0
        self.first = threading.Event()

    def sample(self, with_pss):
        rss = pss = 0
        pids = tree_pids(self.root)
        for p in pids:
            st = proc_kb(f"/proc/{p}/status", ("VmRSS", "VmHWM"))
            rss += st.get("VmRSS", 0)
            if "VmHWM" in st:
                self.hwm_kb[p] = max(self.hwm_kb.get(p, 0), st["VmHWM"])
            if with_pss:
                pss += proc_kb(f"/proc/{p}/smaps_rollup", ("Pss",)).get("Pss", 0)
        return rss, pss, len(pids)

    def run(self):
        last = None
        while True:
            t = now()
            if last is not None:
                self.max_gap_s = max(self.max_gap_s, t - last)
            last = t
            rss, pss, n = self.sample(self.samples % self.pss_every == 0)
            self.max_sample_s = max(self.max_sample_s, now() - t)
            self.samples += 1
            self.peak_rss_kb = max(self.peak_rss_kb, rss)
            self.peak_pss_kb = max(self.peak_pss_kb, pss)
            self.max_procs = max(self.max_procs, n)
            if self.idle is None:
                self.idle = {"rss_kb": rss, "pss_kb": pss, "procs": n}
                self.first.set()
            self.cpu_s = time.thread_time()
            if self.stop_ev.wait(self.interval):
                break

    def result(self):
        mib = lambda kb: kb / 1024.0  # noqa: E731
        return {"idle_rss_mib": mib(self.idle["rss_kb"]), "idle_pss_mib": mib(self.idle["pss_kb"]),
                "idle_procs": self.idle["procs"],
                "peak_rss_sum_mib": mib(self.peak_rss_kb), "peak_pss_sum_mib": mib(self.peak_pss_kb),
                "max_procs": self.max_procs,
                "vmhwm_mib": {str(p): mib(v) for p, v in sorted(self.hwm_kb.items())},
                "samples": self.samples, "interval_s": self.interval,
                "pss_interval_s": self.interval * self.pss_every,
                "max_gap_s": self.max_gap_s, "max_sample_s": self.max_sample_s,
                "sampler_cpu_s": self.cpu_s}


# --- phases ------------------------------------------------------------------

def summarize(recs, wall_s=None):
    ok = [r for r in recs if r["ok"]]
    lat = [r["lat_ms"] for r in ok]
    s = {"requests": len(recs), "ok": len(ok), "failed": len(recs) - len(ok),
         "errors": sorted({r["err"] for r in recs if not r["ok"]})[:5],
         "lat_p50_ms": median(lat), "lat_p95_ms": pct(lat, 95), "lat_max_ms": max(lat) if lat else None,
         "audio_s_total": sum(r["audio_s"] for r in ok),
         "audio_s_p50": median([r["audio_s"] for r in ok])}
    ttfa = [r["ttfa_ms"] for r in ok if "ttfa_ms" in r]
    s["ttfa_p50_ms"], s["ttfa_p95_ms"] = median(ttfa), pct(ttfa, 95)
    for k in ("hs_ms", "queue_ms", "synth_ms", "server_synth_ms"):
        v = [r[k] for r in ok if k in r]
        if v:
            s[k + "_p50"] = median(v)
    if wall_s is not None:
        s["wall_s"] = wall_s
        s["throughput_audio_s_per_s"] = s["audio_s_total"] / wall_s if wall_s > 0 else None
    return s


def sequential(do, texts, reps, piper_url=None):
    """reps rounds over texts, one request at a time."""
    recs = []
    for _ in range(reps):
        for i, text in enumerate(texts):
            r = do(text)
            r["text"] = i
            if piper_url and r["ok"]:
                # Piper's own synthesis time for that request (its web page's figure).
                try:
                    last = piper_get(piper_url, "/info").get("last") or {}
                    if last.get("text") == text.strip():
                        r["server_synth_ms"] = last["synthesize_seconds"] * 1e3
                except Exception:
                    pass
            recs.append(r)
    return recs


def concurrent(do, texts, clients, duration):
    recs, lock = [], threading.Lock()
    t_start = now()
    t_end = t_start + duration
    last_done = [t_start]

    def client(k):
        i = k
        while now() < t_end:
            r = do(texts[i % len(texts)])
            r["text"] = i % len(texts)
            i += 1
            with lock:
                recs.append(r)
                last_done[0] = max(last_done[0], now())

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return recs, last_done[0] - t_start


def read_texts(path, min_chars=0):
    with open(path, encoding="utf-8") as f:
        lines = [l.strip() for l in f if l.strip() and not l.startswith("#")]
    return [l for l in lines if len(l) >= min_chars]


def cmd_run(a):
    with open(a.voice_json, encoding="utf-8") as f:
        rate = json.load(f)["audio"]["sample_rate"]
    short = read_texts(a.short)
    long_ = read_texts(a.long, a.long_min_chars)
    if not short or not long_:
        raise SystemExit("bench_e2e: no texts")
    if a.server == "ttsd":
        whole = lambda t: ttsd_request(a.socket, t, False, rate)  # noqa: E731
        streamed = lambda t: ttsd_request(a.socket, t, True, rate)  # noqa: E731
        piper_url = None
    else:
        whole = lambda t: piper_request(a.url, t, rate)  # noqa: E731
        streamed = None
        piper_url = a.url

    sampler = TreeSampler(a.pid)
    sampler.start()
    sampler.first.wait(5)
    out = {"server": a.server, "pid": a.pid, "sample_rate": rate, "reps": a.reps,
           "duration_s": a.duration, "startup_s": a.startup_s,
           "texts": {"short": short, "long": long_}, "phases": {}, "driver": {}}

    def phase(name, fn):
        c0, w0 = cpu_self(), now()
        s0 = sampler.cpu_s
        res = fn()
        wall, cpu = now() - w0, cpu_self() - c0
        drv = max(0.0, cpu - (sampler.cpu_s - s0))
        out["driver"][name] = {"wall_s": wall, "cpu_s": cpu, "cpu_excl_sampler_s": drv,
                               "cpu_pct_of_one_core": 100.0 * cpu / wall if wall else None}
        print(f"bench_e2e: {a.server} {name}: {wall:.1f} s, driver CPU {100.0 * cpu / wall:.0f}% of a core",
              file=sys.stderr)
        return res

    # Warm-up (not in the figures, but checked and counted): two rounds of
    # two concurrent requests, so that every ttsd worker has run.
    def warmup():
        recs = []
        for _ in range(2):
            ts = [threading.Thread(target=lambda t=t: recs.append(whole(t))) for t in short[:2]]
            for th in ts:
                th.start()
            for th in ts:
                th.join()
        return recs
    recs = phase("warmup", warmup)
    out["phases"]["warmup"] = {"summary": summarize(recs), "requests": recs}

    modes = [("whole", whole)] + ([("stream", streamed)] if streamed else [])
    for mode, do in modes:
        for set_name, texts in (("short", short), ("long", long_)):
            name = f"seq_{mode}_{set_name}"
            recs = phase(name, lambda: sequential(do, texts, a.reps, piper_url))
            out["phases"][name] = {"summary": summarize(recs), "requests": recs}
    for c in CONCURRENCY:
        name = f"conc_{c}"
        recs, wall = phase(name, lambda: concurrent(whole, short, c, a.duration))
        out["phases"][name] = {"summary": summarize(recs, wall), "requests": recs}

    if a.server == "ttsd":
        try:
            st = ttsd_status(a.socket)
            out["status_end"] = {k: st[k] for k in ("worker_restarts", "worker_recycles", "totals",
                                                    "workers_configured")}
            out["status_end"]["workers"] = [{k: w[k] for k in ("pid", "jobs_done", "rss_bytes")}
                                            for w in st["workers"]]
        except Exception as e:
            out["status_end"] = {"error": str(e)}
    sampler.stop_ev.set()
    sampler.join()
    out["memory"] = sampler.result()
    out["failed"] = sum(p["summary"]["failed"] for p in out["phases"].values())
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(out, f)
    print(f"bench_e2e: {a.server}: {out['failed']} failed request(s)", file=sys.stderr)


# --- report ------------------------------------------------------------------

def fmt(v, unit=""):
    if v is None:
        return "-"
    if isinstance(v, int):
        return f"{v}{unit}"
    if abs(v) >= 100:
        return f"{v:.0f}{unit}"
    if abs(v) >= 10:
        return f"{v:.1f}{unit}"
    return f"{v:.2f}{unit}"


def cmd_report(a):
    with open(a.ttsd, encoding="utf-8") as f:
        t = json.load(f)
    with open(a.piper, encoding="utf-8") as f:
        p = json.load(f)
    rows = []  # (label, ttsd, piper, better)

    def S(d, phase, key):
        ph = d["phases"].get(phase)
        return ph["summary"].get(key) if ph else None

    rows.append(("startup to ready (s)", t.get("startup_s"), p.get("startup_s"), "lower"))
    for set_name in ("short", "long"):
        for q in ("p50", "p95"):
            rows.append((f"{set_name}: latency {q} (ms), whole reply",
                         S(t, f"seq_whole_{set_name}", f"lat_{q}_ms"),
                         S(p, f"seq_whole_{set_name}", f"lat_{q}_ms"), "lower"))
        for q in ("p50", "p95"):
            rows.append((f"{set_name}: latency {q} (ms), ttsd streamed",
                         S(t, f"seq_stream_{set_name}", f"lat_{q}_ms"),
                         S(p, f"seq_whole_{set_name}", f"lat_{q}_ms"), "lower"))
        for q in ("p50", "p95"):
            rows.append((f"{set_name}: first audio {q} (ms)*",
                         S(t, f"seq_stream_{set_name}", f"ttfa_{q}_ms"),
                         S(p, f"seq_whole_{set_name}", f"ttfa_{q}_ms"), "lower"))
    for c in CONCURRENCY:
        rows.append((f"C={c}: throughput (audio s / wall s)",
                     S(t, f"conc_{c}", "throughput_audio_s_per_s"),
                     S(p, f"conc_{c}", "throughput_audio_s_per_s"), "higher"))
        rows.append((f"C={c}: latency p95 (ms)", S(t, f"conc_{c}", "lat_p95_ms"),
                     S(p, f"conc_{c}", "lat_p95_ms"), "lower"))
    rows.append(("RSS idle, all processes (MiB)", t["memory"]["idle_rss_mib"],
                 p["memory"]["idle_rss_mib"], "lower"))
    rows.append(("RSS peak of the sum, 50 ms samples (MiB)", t["memory"]["peak_rss_sum_mib"],
                 p["memory"]["peak_rss_sum_mib"], "lower"))
    rows.append(("PSS peak of the sum, 1 s samples (MiB)", t["memory"]["peak_pss_sum_mib"],
                 p["memory"]["peak_pss_sum_mib"], "lower"))
    rows.append(("failed requests", t["failed"], p["failed"], "lower"))

    w = max(len(r[0]) for r in rows)
    print(f"== End to end: ttsd (daemon.toml, {t['memory']['idle_procs']} processes) vs Piper's HTTP server "
          f"(piper-tts, Flask), one at a time; reps={t['reps']}, duration={t['duration_s']} s")
    print(f"{'figure':<{w}} {'ttsd':>9} {'piper':>9} {'ttsd/piper':>10}")
    for label, tv, pv, better in rows:
        ratio = tv / pv if (tv is not None and pv) else None
        print(f"{label:<{w}} {fmt(tv):>9} {fmt(pv):>9} {fmt(ratio):>10}  ({better} is better)")
    print("* first audio: ttsd = first Audio frame of a streamed request; Piper streams nothing, "
          "its figure is the first byte of the WAV body.")
    print("  latencies: from connect() (a new connection per request) to the last audio byte; "
          "concurrency runs use whole replies;\n  throughput = audio seconds of the replies "
          "received / wall time from the start until the last reply (requests sent before the end "
          "of --duration are waited for).")

    print("-- where the time goes, short replies sent one at a time (medians, ms)")
    for mode in ("whole", "stream"):
        s = t["phases"][f"seq_{mode}_short"]["summary"]
        rest = None
        if None not in (s.get("lat_p50_ms"), s.get("queue_ms_p50"), s.get("synth_ms_p50")):
            rest = s["lat_p50_ms"] - s["queue_ms_p50"] - s["synth_ms_p50"]
        print(f"  ttsd {mode:<6}: latency {fmt(s['lat_p50_ms'])}, connect+hello {fmt(s.get('hs_ms_p50'))}, "
              f"queue_ms {fmt(s.get('queue_ms_p50'))}, synth_ms {fmt(s.get('synth_ms_p50'))}, "
              f"rest (dispatch, transfer, client) {fmt(rest)}; audio {fmt(s['audio_s_p50'])} s")
    s = p["phases"]["seq_whole_short"]["summary"]
    if s.get("server_synth_ms_p50") is not None:
        print(f"  piper       : latency {fmt(s['lat_p50_ms'])}, its synthesize_seconds "
              f"{fmt(s['server_synth_ms_p50'])}, rest (HTTP, Flask, WAV, client) "
              f"{fmt(s['lat_p50_ms'] - s['server_synth_ms_p50'])}; audio {fmt(s['audio_s_p50'])} s")

    print("  ttsd with C clients (medians, ms): " + "; ".join(
        f"C={c} latency {fmt(S(t, f'conc_{c}', 'lat_p50_ms'))} = queue {fmt(S(t, f'conc_{c}', 'queue_ms_p50'))}"
        f" + synth {fmt(S(t, f'conc_{c}', 'synth_ms_p50'))} + rest" for c in CONCURRENCY))
    print("-- short texts' audio length (median s, ttsd whole replies); expected 0.5-3 s")
    recs = t["phases"]["seq_whole_short"]["requests"]
    lens = []
    for i, text in enumerate(t["texts"]["short"]):
        v = median([r["audio_s"] for r in recs if r["ok"] and r["text"] == i])
        lens.append(v)
        if v is not None and not 0.5 <= v <= 3.0:
            print(f"  WARNING: {text!r}: {v:.2f} s")
    ok = [v for v in lens if v is not None]
    if ok:
        print(f"  {len(ok)} texts, {min(ok):.2f} to {max(ok):.2f} s")

    print("-- the driver (python, client side) and the samplers")
    for d in (t, p):
        worst = max(d["driver"].items(), key=lambda kv: kv[1]["cpu_pct_of_one_core"] or 0)
        conc = ", ".join(f"C={c} {d['driver'][f'conc_{c}']['cpu_pct_of_one_core']:.0f}%" for c in CONCURRENCY)
        m = d["memory"]
        wall = sum(v["wall_s"] for v in d["driver"].values())
        print(f"  {d['server']:<5}: driver CPU (sampler included), % of one core: {conc}; highest "
              f"{worst[0]} {worst[1]['cpu_pct_of_one_core']:.0f}%. RSS sampler: {m['samples']} samples, "
              f"{100.0 * m['sampler_cpu_s'] / wall:.1f}% of a core, largest gap "
              f"{m['max_gap_s'] * 1e3:.0f} ms, slowest sample {m['max_sample_s'] * 1e3:.0f} ms")
    if "status_end" in t:
        se = t["status_end"]
        if "error" in se:
            print(f"  ttsd status at the end: {se['error']}")
        else:
            print(f"  ttsd at the end: worker restarts {se['worker_restarts']}, recycles {se['worker_recycles']}, "
                  f"done {se['totals']['done']}, errors {se['totals']['errors']}, "
                  f"jobs per worker {[w['jobs_done'] for w in se['workers']]}")
    print("  VmHWM per process (MiB): ttsd " +
          ", ".join(f"{pid}: {v:.0f}" for pid, v in t["memory"]["vmhwm_mib"].items()) +
          "; piper " + ", ".join(f"{pid}: {v:.0f}" for pid, v in p["memory"]["vmhwm_mib"].items()))
    for d in (t, p):
        for name, ph in d["phases"].items():
            if ph["summary"]["failed"]:
                print(f"  FAILED: {d['server']} {name}: {ph['summary']['failed']} of "
                      f"{ph['summary']['requests']}: {ph['summary']['errors']}")

    if a.json:
        ratios = {label: (tv / pv if (tv is not None and pv) else None) for label, tv, pv, _ in rows}
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump({"ttsd": t, "piper": p,
                       "table": [{"figure": l, "ttsd": tv, "piper": pv, "ratio": ratios[l], "better": b}
                                 for l, tv, pv, b in rows]}, f, indent=1)
        print(f"raw figures: {a.json}")
    return 1 if (t["failed"] or p["failed"]) else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--server", choices=("ttsd", "piper"), required=True)
    r.add_argument("--socket")
    r.add_argument("--url")
    r.add_argument("--pid", type=int, required=True)
    r.add_argument("--reps", type=int, default=5)
    r.add_argument("--duration", type=float, default=10.0)
    r.add_argument("--short", required=True)
    r.add_argument("--long", required=True)
    r.add_argument("--long-min-chars", type=int, default=45)
    r.add_argument("--voice-json", required=True)
    r.add_argument("--startup-s", type=float)
    r.add_argument("--out", required=True)
    w = sub.add_parser("wait-piper")
    w.add_argument("--url", required=True)
    w.add_argument("--pid", type=int, required=True)
    w.add_argument("--timeout", type=float, default=180)
    rep = sub.add_parser("report")
    rep.add_argument("ttsd")
    rep.add_argument("piper")
    rep.add_argument("--json")
    a = ap.parse_args()
    if a.cmd == "run":
        if (a.server == "ttsd") != bool(a.socket) or (a.server == "piper") != bool(a.url):
            ap.error("ttsd needs --socket, piper needs --url")
        cmd_run(a)
    elif a.cmd == "wait-piper":
        wait_piper(a.url, a.pid, a.timeout)
    else:
        return cmd_report(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
