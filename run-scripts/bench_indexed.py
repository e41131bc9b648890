#!/usr/bin/env python3
"""bench_indexed: the scale-out Job's figures (issue 21), printed as Markdown tables. Not run in CI (minutes).

    .venv/bin/python run-scripts/bench_indexed.py [--shards 4,16,64] [--window 60] [--samples 8] [--spacing 31]
                                                 [--skip-requests] [--skip-jobs] [--release]

1. **S3 requests per minute by operation**, idle and busy, for each S in --shards: moto_server (request recording
   on), the EvalAI test server, S real `logcopy upload` processes (one per shard, each on a pod volume of its own)
   and one `logcopy monitor`; the workers are fake: this script writes each worker's results file the evaluator's
   way (a record appended, the file rewritten in place) and its start markers. Idle: a --window with no change;
   busy: every worker adds a route every 10 s, staggered. Beside them, upstream generation 2's pattern, computed
   from its scripts (docker/aws_uploader/run_uploader.sh, docker/monitor/run_monitor.sh, 30 s periods): per
   uploader and period two `aws s3 sync` (a LIST each, of the whole submission prefix and of its ros logs) and one
   HEAD; per monitor period three syncs (three LISTs); PUTs for what changed.
   Also the monitor's CPU seconds and peak RSS (VmHWM) over the idle window.
2. **Results change -> EvalAI PUT** (S = the first of --shards): --samples changes --spacing s apart (30 s or
   more: the EvalAI budget, 6 requests a minute, does not decide), each a new route in one worker's file; the time
   from the write to the fake EvalAI server's receipt of the first PUT carrying the route.
3. **Whole Jobs** (run-scripts/local-job --topology indexed, real supervisors and fake CARLA/evaluators, S = 4):
   cancel on EvalAI -> every worker process exited; a pod killed -> its replacement's evaluator running, and routes
   recorded twice; stragglers: skewed route times (--route-seconds-sigma 1) over 32 routes for S = P, 2P and 4P
   at P = 4: the whole Job's wall time and the slowest shard over the mean.
"""

import argparse
import importlib.machinery
import importlib.util
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_local_job():
    loader = importlib.machinery.SourceFileLoader("local_job", str(ROOT / "run-scripts/local-job"))
    spec = importlib.util.spec_from_loader("local_job", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


LJ = load_local_job()
TEMPLATE = json.loads((ROOT / "fixtures/volumes/lb2.0-finished/agent/agent1/agent_results.json").read_text())
RECORD = TEMPLATE["_checkpoint"]["records"][0]


def results_doc(routes):
    """A Leaderboard 2.0 checkpoint holding `routes` (route numbers), as the evaluator writes it mid-run."""
    records = []
    for i, n in enumerate(routes):
        r = json.loads(json.dumps(RECORD))
        r["index"], r["route_id"] = i, f"RouteScenario_{n}_rep0"
        records.append(r)
    doc = {
        "_checkpoint": {"global_record": {}, "progress": [len(routes), 1000], "records": records},
        "entry_status": "Started",
        "eligible": False,
        "sensors": TEMPLATE["sensors"],
        "values": [],
        "labels": [],
    }
    return json.dumps(doc, indent=4)


class Shard:
    def __init__(self, base, i, shards):
        self.i = i
        self.volume = base / f"pod-{i}" / "volume"
        for d in (f"agent/agent{i}", "containers-status", "simulator"):
            (self.volume / d).mkdir(parents=True, exist_ok=True)
        for m in (f"agent-{i}.start0", f"simulator-{i}.start0"):
            (self.volume / "containers-status" / m).touch()
        self.routes = []
        # Upstream's split (float arithmetic), as the monitor's ROUTE_COUNT check computes it.
        self.first = math.ceil((i - 1) * (1000 / shards))

    def add_route(self):
        self.routes.append(self.first + len(self.routes))
        path = self.volume / f"agent/agent{self.i}/agent_results.json"
        with open(path, "w") as f:  # in place, as the evaluator does
            f.write(results_doc(self.routes))
        return f"RouteScenario_{self.routes[-1]}_rep0"

    def finish(self):
        for m in (f"agent-{self.i}.done", f"simulator-{self.i}.done"):
            (self.volume / "containers-status" / m).touch()


def classify(moto, bucket):
    """{operation: count} of the S3 requests in moto's recording (DynamoDB's are counted apart)."""
    ops = {}
    for v in moto.recorded():
        url, method = v.get("url", ""), v.get("method", "")
        headers = {k.lower(): val for k, val in (v.get("headers") or {}).items()}
        if f"/{bucket}" not in url:
            op = "dynamodb"
        elif method == "GET" and "list-type" in url:
            op = "LIST"
        elif method == "GET":
            op = "GET (conditional)" if "if-none-match" in headers or "if-match" in headers else "GET"
        elif method == "PUT":
            op = "PUT (conditional)" if "if-none-match" in headers or "if-match" in headers else "PUT"
        else:
            op = method
        ops[op] = ops.get(op, 0) + 1
    return ops


def proc_cpu(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def requests_run(a, shards, measure_latency):
    out = Path(tempfile.mkdtemp(prefix=f"bench-indexed-{shards}-"))
    pod = LJ.Pod()
    try:
        moto = LJ.Moto(pod, out)
        evalai = LJ.FakeEvalAi(pod, out)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "EVALAI_"))}
        env.update(moto.env)
        common = dict(
            SUBMISSION_ID=str(LJ.SUBMISSION),
            CHALLENGE_ID=str(LJ.CHALLENGE),
            TRACK_ID=str(LJ.PHASE),
            TEAM_ID=LJ.TEAM,
            S3_BUCKET=LJ.BUCKET,
            DYNAMODB_SUBMISSIONS_TABLE=LJ.TABLE,
            SUBMISSION_WORKERS=str(shards),
            ROUTE_COUNT="1000",
            LOG_FORMAT="human",
        )
        env.update(common)
        shard_list = [Shard(out, i, shards) for i in range(1, shards + 1)]
        uploaders = []
        for s in shard_list:
            s.add_route()
            e = dict(
                env,
                WORKER_ID=str(s.i),
                UPLOAD_PERIOD=str(a.period),
                POD_NAME=f"bench-{s.i}",
                POD_UID=str(uuid.uuid4()),
                POD_FAILURE_COUNT="0",
                POD_IGNORED_FAILURE_COUNT="0",
            )
            argv = [a.bin / "logcopy", "upload", "--logs", s.volume]
            uploaders.append(pod.spawn(f"uploader-{s.i}", argv, e, out / f"uploader-{s.i}.log"))
        mvol = out / "monitor" / "volume"
        mvol.mkdir(parents=True)
        e = dict(env, MONITOR_PERIOD=str(a.period), EVALAI_API_SERVER=evalai.url, EVALAI_AUTH_TOKEN=LJ.TOKEN)
        monitor = pod.spawn("monitor", [a.bin / "logcopy", "monitor", "--logs", mvol], e, out / "monitor.log")
        # Settle: every worker's first route published.
        first = {f"RouteScenario_{s.first}_rep0" for s in shard_list}
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if puts_carrying(evalai, first):
                break
            time.sleep(0.5)
        else:
            raise SystemExit(f"S={shards}: the first routes never reached EvalAI (see {out})")
        time.sleep(2 * a.period)
        rows = {}
        moto.reset_recording()
        cpu0 = proc_cpu(monitor.pid)
        time.sleep(a.window)
        rows["idle"] = classify(moto, LJ.BUCKET)
        cpu1 = proc_cpu(monitor.pid)
        hwm = LJ.vm_hwm_kib(monitor.pid)
        # Changes 30 s or more apart (the goal's premise), measured after the idle window, so that no change of the
        # busy phase is still queued for the EvalAI budget or its pacing when the first sample is taken.
        latencies, merges = [], []
        if measure_latency:
            for n in range(a.samples):
                s = shard_list[n % shards]
                t0 = time.time()
                route = s.add_route()
                t1 = tm = None
                merged = mvol / "agent/agent_results.json"
                deadline = time.monotonic() + 120
                while t1 is None and time.monotonic() < deadline:
                    if tm is None and route in read_text(merged):
                        tm = time.time()
                    t1 = first_put_time(evalai, route, t0)
                    time.sleep(0.05)
                latencies.append(None if t1 is None else t1 - t0)
                merges.append(None if tm is None else tm - t0)
                time.sleep(max(0.0, a.spacing - (time.time() - t0)))
        moto.reset_recording()
        t_end = time.monotonic() + a.window
        k = 0
        churn = []
        while time.monotonic() < t_end:
            # Every worker adds a route every 10 s, staggered.
            churn.append((time.time(), shard_list[k % shards].add_route()))
            k += 1
            time.sleep(10.0 / shards)
        rows["busy"] = classify(moto, LJ.BUCKET)
        churned = []
        if measure_latency:
            # Under churn a change waits for the next GET + PUT pair the budget allows (paced 120 / rpm s apart).
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and first_put_time(evalai, churn[-1][1], churn[-1][0]) is None:
                time.sleep(0.5)
            for t0, route in churn:
                t1 = first_put_time(evalai, route, t0)
                churned.append(None if t1 is None else t1 - t0)
        return {
            "shards": shards,
            "ops": rows,
            "monitor_cpu_s": None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
            "monitor_hwm_mib": (hwm or 0) / 1024,
            "latencies": latencies,
            "merges": merges,
            "churned": churned,
        }
    finally:
        pod.kill_all()
        pod.reap()
        if not a.keep:
            shutil.rmtree(out, ignore_errors=True)


def read_text(path):
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def quantiles(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return "none"
    p99 = xs[min(len(xs) - 1, int(round(0.99 * (len(xs) - 1))))]
    return f"p50 {statistics.median(xs):.2f} s, p99 {p99:.2f} s, max {max(xs):.2f} s"


def puts_carrying(evalai, routes):
    for r in evalai.requests():
        if r.get("method") == "PUT":
            body = json.dumps(r.get("body") or {})
            if all(x in body for x in routes):
                return True
    return False


def first_put_time(evalai, route, after):
    for r in evalai.requests():
        if r.get("method") == "PUT" and (r.get("t") or 0) >= after and route in json.dumps(r.get("body") or {}):
            return r.get("t")
    return None


def upstream_per_minute(shards, window_s=60, period=30):
    syncs = window_s / period
    return {"LIST": (2 * shards + 3) * syncs, "HEAD": shards * syncs, "PUT": f"{2 * shards}-{4 * shards}"}


def local_job(a, extra, name):
    out = Path(tempfile.mkdtemp(prefix=f"bench-indexed-job-{name}-"))
    summary = out / "summary.json"
    argv = [sys.executable, ROOT / "run-scripts/local-job", "--topology", "indexed", "--no-build"]
    argv += ["--bin-dir", a.bin, "--out", out / "run", "--summary", summary, "--quiet", "--evalai", "fake"] + extra
    t0 = time.time()
    rc = subprocess.run([str(x) for x in argv]).returncode
    wall = time.time() - t0
    doc = json.loads(summary.read_text()) if summary.exists() else {}
    if not a.keep:
        shutil.rmtree(out, ignore_errors=True)
    return rc, wall, doc


def jobs(a):
    rows = []
    rc, _, doc = local_job(a, ["--workers", "4", "--routes", "16", "--route-seconds", "3", "--cancel-after", "6"], "cancel")
    ends = [p["end"] for p in doc.get("processes", []) if p["name"].startswith("w") and p["end"]]
    if doc.get("cancel_at") and ends:
        rows.append(("cancel on EvalAI -> every worker process exited", f"{max(ends) - doc['cancel_at']:.2f} s", rc))
    rc, _, doc = local_job(a, ["--workers", "4", "--routes", "16", "--route-seconds", "3", "--kill-pod", "2@5"], "kill")
    idx = doc.get("indexes", {}).get("2", {})
    pods = idx.get("pods", [])
    killed = next((e["t"] for e in doc.get("events", []) if "killed (SIGKILL)" in e["event"]), None)
    if killed and len(pods) > 1 and pods[1].get("evaluator_started"):
        rows.append(("pod killed -> replacement's evaluator running", f"{pods[1]['evaluator_started'] - killed:.2f} s", rc))
    rows.append(("routes recorded twice after the kill", str(len(doc.get("duplicate_routes", ["?"]))), rc))
    stragglers = []
    for s in () if a.skip_stragglers else (4, 8, 16):
        extra = ["--workers", str(s), "--parallelism", "4", "--routes", "32", "--route-seconds", "1"]
        extra += ["--route-seconds-sigma", "1"]
        rc, wall, doc = local_job(a, extra, f"straggle-{s}")
        # A shard's span: its first process's start to its last process's end.
        per_shard = {}
        for pr in doc.get("processes", []):
            n = pr["name"]
            if n.startswith("w") and "/" in n and pr["end"]:
                shard = n.split(".")[0][1:]
                lo, hi = per_shard.get(shard, (pr["start"], pr["end"]))
                per_shard[shard] = (min(lo, pr["start"]), max(hi, pr["end"]))
        spans = [hi - lo for lo, hi in per_shard.values()]
        ratio = max(spans) / statistics.mean(spans) if spans else float("nan")
        stragglers.append((s, wall, ratio, rc, doc.get("final_status")))
    return rows, stragglers


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", default="4,16,64")
    p.add_argument("--window", type=float, default=60)
    p.add_argument("--period", type=float, default=5, help="the uploaders' and the monitor's period (5)")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--spacing", type=float, default=31)
    p.add_argument("--skip-requests", action="store_true")
    p.add_argument("--skip-jobs", action="store_true")
    p.add_argument("--skip-stragglers", action="store_true")
    p.add_argument("--release", action="store_true")
    p.add_argument("--keep", action="store_true")
    a = p.parse_args()
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    a.bin = target / ("release" if a.release else "debug")
    cmd = ["cargo", "build", "--quiet", "-p", "logcopy", "-p", "supervisor"] + (["--release"] if a.release else [])
    subprocess.run(cmd, cwd=ROOT, check=True)
    print(f"# bench_indexed ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {os.getloadavg()[0]:.1f})\n")
    if not a.skip_requests:
        results = []
        for n, s in enumerate(int(x) for x in a.shards.split(",")):
            results.append(requests_run(a, s, measure_latency=(n == 0)))
        print(f"## S3 requests per minute (periods {a.period:g} s; upstream generation 2: 30 s)\n")
        print("| S | phase | ours, by operation | total | upstream gen 2 (computed) |")
        print("|---|---|---|---|---|")
        for r in results:
            for phase in ("idle", "busy"):
                ops = r["ops"][phase]
                scale = 60.0 / a.window
                shown = ", ".join(f"{k} {v * scale:.0f}" for k, v in sorted(ops.items()) if k != "dynamodb")
                total = sum(v for k, v in ops.items() if k != "dynamodb") * scale
                up = upstream_per_minute(r["shards"])
                print(
                    f"| {r['shards']} | {phase} | {shown} | {total:.0f} | LIST {up['LIST']:.0f}, HEAD {up['HEAD']:.0f}, "
                    f"PUT {up['PUT']} |"
                )
        print("\n## The monitor over the idle window\n")
        print("| S | CPU s per minute | peak RSS (VmHWM) |")
        print("|---|---|---|")
        for r in results:
            cpu = r["monitor_cpu_s"]
            print(f"| {r['shards']} | {cpu * 60.0 / a.window:.2f} | {r['monitor_hwm_mib']:.1f} MiB |")
        r0 = results[0]
        if r0["latencies"]:
            n = len(r0["latencies"])
            print(f"\n## Results change (S = {r0['shards']}, {n} samples, {a.spacing:g} s apart)\n")
            print(f"- to the monitor's merged file: {quantiles(r0['merges'])}")
            print(f"- to the EvalAI PUT carrying it: {quantiles(r0['latencies'])}")
            print(f"- missing: {sum(1 for x in r0['latencies'] if x is None)}")
            print(f"\n## Under churn (S = {r0['shards']}, every worker a change every 10 s, EvalAI at 6 requests a minute)\n")
            print(f"- to the EvalAI PUT carrying it: {quantiles(r0['churned'])}")
            print(f"- missing: {sum(1 for x in r0['churned'] if x is None)}")
    if not a.skip_jobs:
        rows, stragglers = jobs(a)
        print("\n## Whole Jobs (local-job --topology indexed, S = 4)\n")
        print("| measure | value | local-job exit |")
        print("|---|---|---|")
        for what, v, rc in rows:
            print(f"| {what} | {v} | {rc} |")
        print("\n## Stragglers (32 routes, 1 s mean, sigma 1, P = 4)\n")
        print("| S | wall time | slowest shard / mean | exit | final status |")
        print("|---|---|---|---|---|")
        for s, wall, ratio, rc, st in stragglers:
            print(f"| {s} | {wall:.1f} s | {ratio:.2f} | {rc} | {st} |")


if __name__ == "__main__":
    main()
