"""End-to-end tests of a whole Job: run-scripts/local-job against moto_server and the EvalAI test server.

Each test runs the real binaries (LOCAL_JOB_BIN_DIR, default target/debug: run-scripts/test builds them first)
as the pod's containers would: `logcopy restore`, 4 worker pairs of supervisors around fake-carla and
fake-evaluator replaying the recorded route results of fixtures/volumes/lb2.0-finished, and `logcopy run`; the
test reads what local-job's summary and the servers recorded. They need .venv (moto_server, boto3): run with
.venv/bin/python, as run-scripts/test does. A server that cannot start fails the test; nothing is skipped.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(os.environ.get("LOCAL_JOB_BIN_DIR", Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug"))
RECORDED = ROOT / "fixtures/volumes/lb2.0-finished"
ROUTE_IDS = [f"RouteScenario_{i}_rep0" for i in range(20)]


def _load_local_job():
    from importlib.machinery import SourceFileLoader
    from importlib.util import module_from_spec, spec_from_loader

    loader = SourceFileLoader("local_job", str(ROOT / "run-scripts/local-job"))
    module = module_from_spec(spec_from_loader("local_job", loader))
    loader.exec_module(module)
    return module


# local-job itself: the secrets it hands to the servers and to logcopy.
LOCAL_JOB = _load_local_job()


def run_job(test, name, *flags, expect_rc=0):
    # Kept after the run (replaced by the next one), for diagnosis.
    out = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "e2e" / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    summary_path = out / "summary.json"
    argv = [
        sys.executable,
        str(ROOT / "run-scripts/local-job"),
        "--no-build",
        "--bin-dir",
        str(BIN),
        "--aws",
        "moto",
        "--evalai",
        "fake",
        "--out",
        str(out / "job"),
        "--summary",
        str(summary_path),
        "--timeout",
        "240",
        *flags,
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=400)
    ok = proc.returncode == expect_rc and summary_path.exists()
    if not ok:
        test.fail(
            f"local-job exited {proc.returncode} (expected {expect_rc}); outputs kept in {out}\n"
            f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
        )
    summary = json.loads(summary_path.read_text())
    return out / "job", summary


def evalai_records(job):
    return [json.loads(line) for line in (job / "evalai-record.jsonl").read_text().splitlines() if line.strip()]


def merge_recorded(tmp):
    """What `logcopy merge` + `logcopy evalai` make of the recorded route results: the expected EvalAI payload
    (results.json, and upstream's stdout.txt)."""
    files = sorted(str(p) for p in RECORDED.glob("agent/agent*/agent_results.json"))
    merged = tmp / "merged.json"
    subprocess.run([str(BIN / "logcopy"), "merge", "-f", *files, "-e", str(merged)], check=True, capture_output=True)
    subprocess.run([str(BIN / "logcopy"), "evalai", "-f", str(merged), "-o", str(tmp)], check=True, capture_output=True)
    return json.loads((tmp / "results.json").read_text()), (tmp / "stdout.txt").read_text()


def after_block(stdout):
    """logcopy run's stdout.txt without its run status block (docs/status.md): upstream's summary."""
    assert stdout.startswith("Run status"), stdout[:200]
    return stdout[stdout.index("\n\n") + 2 :]


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class WholeJob(unittest.TestCase):
    def test_crash_and_hang_are_resumed_in_place_and_everything_is_published(self):
        job, s = run_job(
            self,
            "faults",
            "--route-seconds",
            "0.5",
            "--crash-simulator",
            "2@1.2",
            "--hang-agent",
            "3",
            "--final-status",
        )
        rows = {r["worker"]: r for r in s["workers"]}
        self.assertEqual([r["state"] for r in rows.values()], ["done"] * 4, rows)

        # The final EvalAI payload is the merge of the recorded route results.
        final = [r for r in evalai_records(job) if r["method"] == "PUT" and "update_submission" in r["path"]]
        self.assertEqual(len(final), 1, "one final status")
        self.assertEqual(final[0]["body"]["submission_status"], "FINISHED")
        with tempfile.TemporaryDirectory() as tmp:
            expected, upstream_stdout = merge_recorded(Path(tmp))
        self.assertEqual(json.loads(final[0]["body"]["result"]), expected)
        # stdout.txt is the run status block, then upstream's summary byte for byte.
        self.assertEqual(after_block(final[0]["body"]["stdout"]), upstream_stdout)
        partials = [r for r in evalai_records(job) if r["method"] == "PUT" and "partially" in r["path"]]
        self.assertTrue(partials, "partial results were published during the run")

        # Each route appears once in the merged results file.
        merged = json.loads((job / "volume/agent/agent_results.json").read_text())
        ids = [r["route_id"] for r in merged["_checkpoint"]["records"]]
        self.assertEqual(sorted(ids), sorted(ROUTE_IDS))

        # S3 holds every file of the volume (logcopy's own state file excepted; its log as far as it was at the
        # final upload, which is its last line but the "ends" one).
        volume = s["volume_files"]
        dump = Path(s["s3_dump"])
        for rel, digest in volume.items():
            if rel in ("logcopy/.upload-manifest.json", "logcopy/logcopy.log"):
                continue
            self.assertTrue((dump / rel).is_file(), f"{rel} is not in S3")
            self.assertEqual(sha(dump / rel), digest, f"{rel} differs in S3")
        log_s3 = (dump / "logcopy/logcopy.log").read_bytes()
        log_vol = (job / "volume/logcopy/logcopy.log").read_bytes()
        self.assertTrue(log_vol.startswith(log_s3) and len(log_s3) > 0)
        self.assertNotIn("logcopy/.upload-manifest.json", s["s3"])

        # DynamoDB: RUNNING with the first start_time, then the final record with the same start_time.
        history = s["dynamodb_history"]
        running = [h for h in history if h.get("submission_status") == "RUNNING"]
        self.assertTrue(running, history)
        start = running[0]["start_time"]
        self.assertNotEqual(start, "-")
        self.assertTrue(all(h["start_time"] == start for h in history if h["start_time"] != "-"), history)
        last = s["dynamodb"]
        self.assertEqual(last["submission_status"], "FINISHED")
        self.assertEqual(last["start_time"], start)
        self.assertNotEqual(last["end_time"], "-")
        self.assertEqual(last["results"], "s3://leaderboard-local/4321")

        # Both faulty pairs were restarted in place: a crash marker each, the child started twice, the resume
        # taken, and every supervisor process started once and ended 0.
        logs = job / "logs"
        for w in (2, 3):
            self.assertGreaterEqual(rows[w]["crash_markers"], 1, rows[w])
            self.assertEqual(rows[w]["restarts"], 1, rows[w])
            starts = (logs / f"evaluator-{w}.starts0").read_text().splitlines()
            self.assertEqual(len(starts), 2, starts)
            self.assertIn("resume=1", starts[1])
        carla2 = (logs / "carla-2.starts0").read_text().splitlines()
        self.assertEqual(len(carla2), 2, carla2)
        for w in (1, 4):
            self.assertEqual(rows[w]["crash_markers"], 0, rows[w])
        procs = [p for p in s["processes"] if p["name"].startswith(("simulator-", "agent-", "logcopy"))]
        self.assertEqual(len(procs), 8 + 1)
        self.assertTrue(all(p["rc"] == 0 for p in procs), procs)

        # The EvalAI token and the AWS secret key appear nowhere: not in any process's output or log, not on the
        # volume, not in S3 (its dump), not in what the servers recorded.
        secrets = [LOCAL_JOB.TOKEN.encode(), LOCAL_JOB.AWS_SECRET.encode()]
        searched = 0
        for path in job.rglob("*"):
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                searched += 1
                for secret in secrets:
                    self.assertNotIn(secret, data, f"{secret.decode()} leaked into {path}")
        self.assertGreater(searched, 50, "the search saw the Job's files")

    def test_mixed_modes_send_each_edge_where_asked(self):
        """local-job's mixed modes (issue 19): logcopy refuses an EvalAI server without a bucket and a bucket without
        a server, so each mode passes its local edge's own flag (--local-storage, --local-evalai); the Job ends, and
        the local edge, only it, is in the local folder."""
        for name, flags, local, remote in [
            ("mixed-fake-evalai-local-aws", ["--aws", "local"], "s3", "evalai-requests.jsonl"),
            ("mixed-local-evalai-moto", ["--evalai", "local"], "evalai-requests.jsonl", "s3"),
        ]:
            _, s = run_job(self, name, "--workers", "1", "--routes", "2", "--route-seconds", "0.2", *flags)
            self.assertEqual([r["state"] for r in s["workers"]], ["done"], s["workers"])
            sinks = Path(s["sinks"])
            self.assertTrue((sinks / local).exists(), f"{name}: {local} is not in {sinks}")
            self.assertFalse((sinks / remote).exists(), f"{name}: {remote} went to {sinks}, not to the remote")

    def test_cancel_stops_every_process_within_2_s_and_no_partial_put_follows(self):
        job, s = run_job(self, "cancel", "--route-seconds", "1", "--cancel-after", "4")
        cancel_at = s["cancel_at"]
        self.assertIsNotNone(cancel_at)
        records = evalai_records(job)
        reads = [r for r in records if r["method"] == "GET" and r["t"] >= cancel_at]
        self.assertTrue(reads, "logcopy read the status after the cancel")
        read_at = reads[0]["t"]
        procs = [p for p in s["processes"] if p["name"].startswith(("simulator-", "agent-", "logcopy"))]
        self.assertEqual(len(procs), 9)
        for p in procs:
            self.assertIsNotNone(p["end"], p)
            self.assertLessEqual(
                p["end"] - read_at, 2.0, f"{p['name']} ended {p['end'] - read_at:.2f} s after the read"
            )
            self.assertEqual(p["rc"], 0, p)
        late = [r for r in records if r["method"] == "PUT" and r["t"] > read_at]
        self.assertEqual(late, [], "no PUT after logcopy read `cancelled`")
        self.assertTrue(all(r["state"] == "cancelled" for r in s["workers"]), s["workers"])
        self.assertLess(sum(r["done"] for r in s["workers"]), 20, "the Job was cancelled mid-run")

    def test_a_killed_job_resumes_without_rerunning_or_reuploading(self):
        job, s = run_job(self, "resume", "--route-seconds", "1", "--kill-after", "8")
        self.assertIsNotNone(s["kill_at"])
        at_kill = s["routes_at_kill"]
        self.assertGreaterEqual(sum(len(v) for v in at_kill.values()), 8)
        rows = {r["worker"]: r for r in s["workers"]}
        self.assertEqual([r["state"] for r in rows.values()], ["done"] * 4, rows)

        # Finished routes are not run again: each evaluator of the second run starts past what S3 held.
        for w, done in at_kill.items():
            starts = (job / f"logs/evaluator-{w}.starts1").read_text().splitlines()
            self.assertEqual(len(starts), 1, starts)
            first = starts[0].split("first_route=")[1].split()[0]
            self.assertNotIn(f"RouteScenario_{first}_rep0", done, f"worker {w} ran a finished route again")
        merged = json.loads((job / "volume-resumed/agent/agent_results.json").read_text())
        self.assertEqual(sorted(r["route_id"] for r in merged["_checkpoint"]["records"]), sorted(ROUTE_IDS))

        # Nothing is uploaded again: the first object PUT of each key in the second run differs from what the restore
        # brought back for it (the restore seeded the upload manifest), and no key gets the same content twice. A
        # later PUT may carry the restored content again: the volume can change a file and change it back (a checkpoint
        # repaired at resume, then rewritten by the evaluator), and S3 follows the volume.
        restored = s["restored"]
        puts = [p for p in s["s3_puts"] if p["sha256"]]
        self.assertTrue(puts, "the second run uploaded its changes")
        first = {}
        for p in puts:
            first.setdefault(p["key"], p["sha256"])
        for key, sha in first.items():
            self.assertNotEqual(restored.get(key), sha, f"{key} was uploaded again unchanged")
        seen = set()
        for p in puts:
            self.assertNotIn((p["key"], p["sha256"]), seen, f"{p['key']} was uploaded twice with the same content")
            seen.add((p["key"], p["sha256"]))
        self.assertIn("agent/agent1/agent_results.json", restored, "the restore brought the worker files back")


INDEXED_ROUTES = [f"RouteScenario_{i}_rep0" for i in range(12)]


def run_indexed(test, name, *flags, expect_rc=0):
    """local-job --topology indexed: 3 shards, a pod each with a volume of its own, the monitor, moto's S3 between."""
    return run_job(
        test,
        name,
        "--topology",
        "indexed",
        "--workers",
        "3",
        "--routes",
        "12",
        "--route-seconds",
        "2",
        *flags,
        expect_rc=expect_rc,
    )


class IndexedJob(unittest.TestCase):
    """The scale-out Job (issue 21) on this machine: local_indexed.py's model of the Job controller."""

    def assert_once_each(self, s, routes):
        self.assertEqual(s["duplicate_routes"], [], "a route was recorded twice")
        self.assertEqual(sorted(s["merged_routes"]), sorted(routes))

    def final_puts(self, job):
        return [
            r
            for r in evalai_records(job)
            if r.get("method") == "PUT" and (r.get("body") or {}).get("submission_status") in ("FINISHED", "FAILED")
        ]

    def test_a_killed_pod_is_replaced_and_resumes_through_s3_faults(self):
        job, s = run_indexed(self, "indexed-kill", "--kill-pod", "2@4", "--s3-fault-rate", "0.03")
        self.assertEqual(s["final_status"], "FINISHED")
        self.assert_once_each(s, INDEXED_ROUTES)
        shard = s["indexes"]["2"]
        self.assertEqual([p["result"] for p in shard["pods"]], ["killed", "succeeded"])
        self.assertEqual(shard["failures"], 1, "a killed pod spends one of the shard's retries")
        self.assertEqual(s["s3_mismatched"], [], "S3 holds what each shard's last pod produced")
        self.assertGreater(s["s3_faults"], 0, "the proxy answered some requests with 503")
        # The replacement restored the checkpoint: its evaluator resumed, not from the shard's first route.
        starts = (Path(s["out"]) / "pods/w2.1/evaluator.starts").read_text().splitlines()
        self.assertIn("resume=1", starts[0], starts)

    def test_a_pod_lost_on_its_last_try_ends_the_submission_failed_with_its_routes_not_run(self):
        job, s = run_indexed(self, "indexed-lost", "--lose-pod", "2@4", "--worker-silence", "6")
        self.assertEqual(s["final_status"], "FAILED")
        self.assertEqual(s["duplicate_routes"], [])
        self.assertLess(len(s["merged_routes"]), 12)
        log = (Path(s["out"]) / "monitor/monitor.log").read_text()
        self.assertIn("worker 2 stopped reporting", log)

    def test_an_eviction_spends_no_retry(self):
        _, s = run_indexed(self, "indexed-evict", "--evict-pod", "1@4")
        self.assertEqual(s["final_status"], "FINISHED")
        self.assert_once_each(s, INDEXED_ROUTES)
        shard = s["indexes"]["1"]
        self.assertEqual((shard["failures"], shard["ignored"]), (0, 1))
        self.assertEqual([p["result"] for p in shard["pods"]], ["evicted", "succeeded"])
        # Kubernetes' sidecar order: the uploader (a native sidecar) ends after the main containers.
        ends = {pr["name"]: pr["end"] for pr in s["processes"] if pr["name"].startswith("w1.0/")}
        said = "pod 0's main containers exited: SIGTERM to its uploader"
        signalled = next(e["t"] for e in s["events"] if said in e["event"])
        self.assertGreaterEqual(signalled, max(ends["w1.0/agent"], ends["w1.0/simulator"]), ends)
        self.assertGreaterEqual(ends["w1.0/uploader"], signalled, ends)

    def test_a_stale_pod_racing_its_replacement_stands_down(self):
        _, s = run_indexed(self, "indexed-stale", "--stale-pod", "3@4")
        self.assertEqual(s["final_status"], "FINISHED")
        self.assert_once_each(s, INDEXED_ROUTES)
        old = (Path(s["out"]) / "pods/w3.0/uploader.log").read_text()
        self.assertIn("stale pod", old)
        self.assertEqual(s["s3_mismatched"], [], "S3 holds the replacement's files, not the stale pod's")

    def test_a_failed_index_waits_its_backoff_behind_the_indexes_that_never_started(self):
        _, s = run_indexed(self, "indexed-backoff", "--parallelism", "2", "--workers", "4", "--kill-pod", "1@4")
        self.assertEqual(s["final_status"], "FINISHED")
        self.assert_once_each(s, INDEXED_ROUTES)
        shard = s["indexes"]["1"]
        self.assertEqual([p["result"] for p in shard["pods"]], ["killed", "succeeded"])
        events = [e["event"] for e in s["events"]]
        killed = next(e for e in s["events"] if "worker 1: pod 0 killed" in e["event"])
        replaced = next(e for e in s["events"] if "worker 1: pod 1" in e["event"] and "starts" in e["event"])
        self.assertGreaterEqual(replaced["t"] - killed["t"], 1.0, "the per-index backoff (1 s) was waited")
        self.assertTrue(any("backoff of 1 s" in e for e in events), events)
        # P < S: the failed index queued behind the indexes that never started (3 and 4 started before it).
        first = {i: min(p["started"] for p in s["indexes"][str(i)]["pods"]) for i in (3, 4)}
        self.assertLess(max(first.values()), shard["pods"][1]["started"], "indexes 3 and 4 went first")

    def test_a_duplicate_pod_with_the_same_counts_records_no_route_twice(self):
        _, s = run_indexed(self, "indexed-same-counts", "--same-counts-pod", "2@4")
        self.assertEqual(s["final_status"], "FINISHED")
        self.assert_once_each(s, INDEXED_ROUTES)
        shard = s["indexes"]["2"]
        self.assertEqual(len(shard["pods"]), 2)
        self.assertEqual(shard["failures"], 0, "the duplicate has the same failure counts")
        log = (Path(s["out"]) / "monitor/monitor.log").read_text()
        self.assertNotIn("worker 2 stopped reporting", log)

    def test_the_monitor_killed_and_restarted_publishes_one_final_result(self):
        job, s = run_indexed(self, "indexed-monitor", "--kill-monitor", "5", "--final-status")
        self.assertEqual(s["final_status"], "FINISHED")
        self.assert_once_each(s, INDEXED_ROUTES)
        self.assertEqual(len(self.final_puts(job)), 1, "exactly one final status")
        # The monitor serves the operator as `logcopy run` does: its termination message and `logcopy status`.
        self.assertIn("final status FINISHED", s["monitor_termination"] or "")
        st = s["monitor_status"]
        self.assertEqual([w["routes_done"] for w in st["workers"]], [4, 4, 4], st)
        self.assertTrue(all(set(w["state"].values()) == {"done"} for w in st["workers"]), st)

    def test_cancel_early_and_mid_run_stops_every_pod(self):
        for name, at in (("indexed-cancel-early", "1"), ("indexed-cancel-mid", "6")):
            job, s = run_indexed(self, name, "--cancel-after", at)
            self.assertEqual(s["final_status"], "CANCELLED", name)
            self.assertEqual(s["duplicate_routes"], [], name)
            workers = [p for p in s["processes"] if p["name"].startswith("w")]
            self.assertTrue(all(p["end"] for p in workers), f"{name}: a worker process outlived the run")
            self.assertFalse(self.final_puts(job), f"{name}: no FINISHED or FAILED after a cancel")

    def test_a_pair_no_cancel_stops_ends_with_the_worker_jobs_deletion(self):
        """Worker 2's supervisors are frozen (as a pair whose participant code keeps it from stopping): the cancel
        ends the monitor, and the worker Job's deletion (the state machine's last step, modelled) ends the pod with
        SIGTERM, then SIGKILL after the grace period, instead of its GPU being held to the Job's deadline."""
        job, s = run_indexed(self, "indexed-freeze", "--freeze-pod", "2@2", "--cancel-after", "4")
        self.assertEqual(s["final_status"], "CANCELLED")
        pods = s["indexes"]["2"]["pods"]
        self.assertEqual([p["result"] for p in pods], ["deleted"], pods)
        self.assertEqual([p["result"] for i in ("1", "3") for p in s["indexes"][i]["pods"]], ["succeeded"] * 2)
        workers = [p for p in s["processes"] if p["name"].startswith("w")]
        self.assertTrue(all(p["end"] for p in workers), "a worker process outlived the run")


if __name__ == "__main__":
    unittest.main()
