#!/usr/bin/env python3
"""Streamed-text latency, as a voice assistant feels it (`scripts/bench
follow`): a paragraph written word by word at --rate tokens per second, the
way a language model writes a reply, spoken by ttsd while it is written.

    bench_follow.py --socket PATH [--rate 20] [--reps 5] [--ttsctl PATH]

Three figures per paragraph, each the median (and p95) of --reps runs:
  1. native protocol (OpenText/AppendText/FinishText, streamed audio): time
     from sending the first sentence's last word to the first audio frame.
     The sentence is known complete once the next word has arrived (that
     tells "Dr. Smith" from "the end. Then"), so this includes one token's
     wait (1/rate s).
  2. `ttsctl say --follow --raw -o -` fed by a pipe at the same rate: time
     from the first byte written to the first audio byte on its stdout.
  3. the same without streaming: the whole paragraph sent when the writer is
     done (what a client that waits for the full reply gets): time from the
     first byte written to the first audio, for comparison with 2.
A running ttsd on --socket is used (scripts/bench starts one with the
repository's daemon.toml). Standard library only, plus scripts/ttsd_client.py.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ttsd_client as t  # noqa: E402

PARAGRAPHS = [
    "Sure, I can help with that. The meeting is moved to Thursday at ten, "
    "in the small room on the second floor. I will send everyone a reminder "
    "the evening before.",
    "It looks like rain this afternoon. Take an umbrella if you go out, and "
    "the bus may run a little late because of the roadworks near the station.",
]


def words_of(text):
    """The paragraph as tokens: each word with the space before it."""
    parts = text.split(" ")
    return [parts[0]] + [" " + w for w in parts[1:]]


def first_sentence_end(tokens):
    """Index of the token that ends the first sentence."""
    for i, tok in enumerate(tokens):
        if tok.rstrip().endswith((".", "!", "?")):
            return i
    return len(tokens) - 1


def pct(xs, p):
    s = sorted(xs)
    return s[max(0, math.ceil(p / 100.0 * len(s)) - 1)]


def median(xs):
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def native_once(sock, text, rate):
    """Seconds from the first sentence's last word sent to the first audio."""
    conn = t.Connection(sock)
    tokens = words_of(text)
    last = first_sentence_end(tokens)
    sent_at = {}
    first_audio = []
    done = threading.Event()
    err = []

    def reader():
        try:
            while True:
                r = conn.recv()
                if r["type"] == "audio" and not first_audio:
                    first_audio.append(time.perf_counter())
                elif r["type"] in ("done", "error") and r.get("id") == 1:
                    if r["type"] == "error":
                        err.append(r)
                    return
        except Exception as e:  # the writer reports it
            err.append(e)
        finally:
            done.set()

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    conn.send(t.open_text(1, "", stream=True))
    for i, tok in enumerate(tokens):
        conn.send(t.append_text(1, tok))
        sent_at[i] = time.perf_counter()
        time.sleep(1.0 / rate)
    conn.send(t.finish_text(1))
    done.wait(120)
    conn.sock.close()
    if err or not first_audio:
        raise RuntimeError(f"request failed: {err}")
    return first_audio[0] - sent_at[last]


def ttsctl_once(ttsctl, sock, text, rate, follow):
    """Seconds from the first byte written to the first audio byte out."""
    args = [ttsctl, "--socket", sock, "say", "--raw", "-o", "-", "-q"]
    if follow:
        args.insert(4, "--follow")
    p = subprocess.Popen(args + ["-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    first = []

    def reader():
        b = p.stdout.read(1)
        if b:
            first.append(time.perf_counter())
        p.stdout.read()

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    t0 = None
    for tok in words_of(text):
        p.stdin.write(tok.encode())
        p.stdin.flush()
        if t0 is None:
            t0 = time.perf_counter()
        time.sleep(1.0 / rate)
    p.stdin.close()
    th.join(120)
    rc = p.wait(120)
    if rc != 0 or not first:
        raise RuntimeError(f"ttsctl exited {rc}: {p.stderr.read().decode(errors='replace')}")
    return first[0] - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket", required=True)
    ap.add_argument("--rate", type=float, default=20.0, help="tokens (words) per second")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--ttsctl", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "ttsctl"))
    ap.add_argument("--json", help="write the raw figures here")
    a = ap.parse_args()
    native, follow, whole = [], [], []
    for _ in range(a.reps):
        for text in PARAGRAPHS:
            native.append(native_once(a.socket, text, a.rate))
            follow.append(ttsctl_once(a.ttsctl, a.socket, text, a.rate, True))
            whole.append(ttsctl_once(a.ttsctl, a.socket, text, a.rate, False))
    ms = lambda xs: (1000 * median(xs), 1000 * pct(xs, 95))
    first_sentence_s = [len(words_of(p)[: first_sentence_end(words_of(p)) + 1]) / a.rate for p in PARAGRAPHS]
    print(f"text written at {a.rate:g} tokens/s; {len(PARAGRAPHS)} paragraphs x {a.reps} runs; "
          f"the first sentence takes {min(first_sentence_s):.2f}-{max(first_sentence_s):.2f} s to write")
    print("| figure | median | p95 |")
    print("|---|---|---|")
    print("| first sentence's last word sent -> its first audio (native, streamed) | %.0f ms | %.0f ms |" % ms(native))
    print("| first byte written -> first audio, `ttsctl say --follow` | %.0f ms | %.0f ms |" % ms(follow))
    print("| first byte written -> first audio, whole text at the end (`ttsctl say -`) | %.0f ms | %.0f ms |" % ms(whole))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"native_s": native, "follow_s": follow, "whole_s": whole, "rate": a.rate}, f)


if __name__ == "__main__":
    main()
