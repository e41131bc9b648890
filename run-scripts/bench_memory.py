#!/usr/bin/env python3
"""Peak RSS of `logcopy run --once --local` on the hostile volumes of docs/security.md (breaks 5 and 6).

Each case copies fixtures/volumes/lb2.0-mid-run, adds its hostile content, runs the release binary once
(`--once --local OUT`, S3 going to the embedded local store) and prints the peak RSS (VmHWM, polled every 5 ms),
the wall time and the exit code. Usage:

    cargo build --release -p logcopy
    python3 run-scripts/bench_memory.py [--bin target/release/logcopy] [--work /tmp/logcopy-mem] [CASE...]

Cases: results-<N>mib (a valid results file of N MiB for worker 1, run with --max-results-bytes N MiB),
million-files, forged-manifest (250 MiB), manifest-at-cap (199,999 entries, under 32 MiB) (default: results-16mib,
million-files, forged-manifest, manifest-at-cap). Prints numbers; asserts
nothing.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "fixtures/volumes/lb2.0-mid-run"
WORKER1 = "agent/agent1/agent_results.json"


def results_file(size):
    """A valid Leaderboard 2.0 results file of at most `size` bytes (within 1%): worker 1's records repeated under new
    route ids."""
    d = json.loads((FIXTURE / WORKER1).read_text())
    recs = d["_checkpoint"]["records"]

    def build(n):
        out = []
        for i in range(n):
            r = json.loads(json.dumps(recs[i % len(recs)]))
            r["route_id"] = f"RouteScenario_{i}_rep0"
            r["index"] = i
            out.append(r)
        d["_checkpoint"]["records"] = out
        d["_checkpoint"]["progress"] = [n, n]
        return json.dumps(d, indent=4).encode()

    n = 100
    data = build(n)
    while not (0.99 * size <= len(data) <= size):
        n = max(1, int(n * size / len(data) * (0.995 if len(data) > size else 1.0)))
        data = build(n)
    return data


def million_files(vol, n=1_000_000):
    d = vol / "agent/agent1/imgs"
    d.mkdir(parents=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for i in range(n):
        os.close(os.open(d / f"{i:07}.png", flags, 0o644))


def forged_manifest(vol, size=250 << 20, entries=None):
    """A well-formed manifest for the run's target of about `size` bytes (or `entries` entries): entries of files
    that do not exist."""
    (vol / "logcopy").mkdir(exist_ok=True)
    head = b'{"target":"file://TARGET","files":{'
    entry = b'"agent/agent1/imgs/%09d.png":{"size":0,"sha256":"' + b"e3" * 32 + b'","mtime_ns":1,"ino":2}'
    with open(vol / "logcopy/.upload-manifest.json", "wb") as f:
        f.write(head)
        written, i = len(head), 0
        while written < size and (entries is None or i < entries):
            e = (b"," if i else b"") + (entry % i)
            f.write(e)
            written += len(e)
            i += 1
        f.write(b"}}")


def run(bin_, vol, out, extra):
    """Runs logcopy; its peak RSS is VmHWM polled every 5 ms (wait4's ru_maxrss would count this script's own memory
    at the fork, which exec keeps)."""
    cmd = [bin_, "run", "--once", "--logs", str(vol), "--local", str(out), *extra]
    t0 = time.monotonic()
    with open(out / "stdout.log", "wb") as log:
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        hwm = 0
        while p.poll() is None:
            try:
                for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        hwm = max(hwm, int(line.split()[1]))
            except (OSError, ValueError):
                pass
            time.sleep(0.005)
    return hwm, time.monotonic() - t0, p.returncode, (out / "stdout.log").read_text(errors="replace")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(ROOT / "target/release/logcopy"))
    ap.add_argument("--work", default="/tmp/logcopy-mem")
    ap.add_argument("cases", nargs="*")
    a = ap.parse_args()
    cases = a.cases or ["results-16mib", "million-files", "forged-manifest", "manifest-at-cap"]
    work = Path(a.work)
    for case in cases:
        shutil.rmtree(work, ignore_errors=True)
        vol, out = work / "logs", work / "out"
        shutil.copytree(FIXTURE, vol)
        out.mkdir(parents=True)
        extra = []
        if case.startswith("results-") and case.endswith("mib"):
            mib = int(case[len("results-") : -len("mib")])
            data = results_file(mib << 20)
            (vol / WORKER1).write_bytes(data)
            extra = ["--max-results-bytes", str(mib << 20)]
            print(f"{case}: worker 1's file is {len(data) / (1 << 20):.2f} MiB")
        elif case == "million-files":
            million_files(vol)
        elif case in ("forged-manifest", "manifest-at-cap"):
            if case == "forged-manifest":
                forged_manifest(vol)
            else:
                forged_manifest(vol, (32 << 20) - 1024, 199_999)
            m = vol / "logcopy/.upload-manifest.json"
            target = f"local:{out}/s3/1"
            data = m.read_bytes().replace(b"file://TARGET", target.encode(), 1)
            m.write_bytes(data)
        else:
            sys.exit(f"unknown case {case}")
        kib, secs, code, log = run(a.bin, vol, out, extra)
        warns = [l for l in log.splitlines() if " WARN " in l or " ERROR " in l]
        uploaded = sum(len(files) for _, _, files in os.walk(out / "s3"))
        print(f"{case}: peak RSS {kib / 1024:.1f} MiB, {secs:.1f} s, exit {code}, {uploaded} objects in the store")
        for w in warns[-4:]:
            print("   ", w[:300])
        sys.stdout.flush()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
