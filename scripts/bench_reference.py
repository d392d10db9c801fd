"""Times the reference runtime (piper-tts 1.8.0 on onnxruntime) on the same
texts as ttsd-bench, for scripts/bench. Prints one JSON object.

usage: bench_reference.py VOICE.onnx TEXTS.txt THREADS REPS
"""
import json
import resource
import sys
import time

import onnxruntime
from piper import PiperVoice, SynthesisConfig


def main() -> None:
    model, texts_path, threads, reps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    voice = PiperVoice.load(model)
    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    voice.session = onnxruntime.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
    rate = voice.config.sample_rate
    texts = [l.strip() for l in open(texts_path, encoding="utf-8") if l.strip() and not l.startswith("#")]
    cfg = SynthesisConfig()

    def run(text):
        t = time.perf_counter()
        samples = sum(len(chunk.audio_int16_array) for chunk in voice.synthesize(text, cfg))
        return time.perf_counter() - t, samples / rate

    run("Warm up.")
    results = []
    for text in texts:
        best, audio = float("inf"), 0.0
        for _ in range(max(1, reps)):
            s, audio = run(text)
            best = min(best, s)
        results.append({"text": text, "audio_s": audio, "synth_s": best, "rtf": best / max(audio, 1e-9)})
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"results": results, "peak_rss_mib": peak}))


if __name__ == "__main__":
    main()
