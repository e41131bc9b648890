"""local-job --topology indexed: the scale-out Job on this machine (issue 21), run by `run-scripts/local-job`.

What runs: the objects of `docker/k8s/make-job --topology indexed --format json` (the worker Indexed Job, the
monitor Job), as processes:
  * S shards (`--workers S`), at most P pods at a time (`--parallelism P`): each pod is a process tree with a
    **volume folder of its own** (OUT/pods/w<i>.<n>/volume): the init container `logcopy restore --worker`, the
    native sidecar `logcopy upload`, `supervisor simulator` around fixtures/bin/fake-carla and `supervisor agent`
    around fixtures/bin/fake-evaluator; the containers' commands and env come from the model, with the downward
    API's values (JOB_COMPLETION_INDEX, the pod's name and UID, the failure counts) filled in here;
  * the monitor (`logcopy monitor`) with its own working folder (OUT/monitor/volume);
  * moto_server (S3 and DynamoDB, the only medium between the pods and the monitor) and EvalAI (the embedded local
    sink, or the test server with --evalai fake).
Nothing is shared between the pods and the monitor but moto's S3 (and EvalAI).

This is our model of the Job controller, not Kubernetes: it schedules pods by index up to the parallelism, gives a
replacement pod the next failure count (`batch.kubernetes.io/job-index-failure-count`) or, after an eviction, the
next ignored-failure count, fails an index on the podFailurePolicy's FailIndex exit codes or past
backoffLimitPerIndex, makes a failed index wait a per-index backoff (1 s doubling, Kubernetes' 10 s scaled down)
and queues it behind the indexes that never started when P < S, and stops a pod's native sidecar (SIGTERM, then
SIGKILL after the grace period) once its main containers have exited; an eviction signals the main containers
first and the sidecar only after they exit (Kubernetes' sidecar order), all within one grace period. When the
monitor ends, the worker Job is deleted as the state machine of `make-job --format step-functions` deletes it: every
pod still there is stopped that way. The manifests themselves are checked by kubernetes-validate and
check-manifest.

Faults: --kill-pod W@S (SIGKILL pod W's processes S s after it started: the pod fails, a replacement restores and
resumes), --lose-pod W@S (as kill, but no replacement: the index's last try; only the monitor's silence rule
sees it), --evict-pod W@S (SIGTERM with the grace period, a disruption: no budget spent), --stale-pod W@S (a
replacement starts while the old pod runs on, as after a network partition: the old one must stand down),
--same-counts-pod W@S (a replacement with the SAME failure counts starts while the old pod runs on, a duplicate
pod: only the chain of owners, not the counts, tells them apart; no route may be recorded twice),
--freeze-pod W@S (SIGSTOP the pod's supervisors: a pair that no cancel stops, which only the worker Job's deletion
after the monitor's end, SIGTERM then SIGKILL, ends), --kill-monitor S (SIGKILL the monitor; it is restarted with its folder, as restartPolicy OnFailure does),
--cancel-after S, --s3-fault-rate R (fixtures/bin/fault-proxy in front of moto answers that share of the requests
with a 503).
"""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

FAULT_PROXY = Path(__file__).resolve().parent.parent / "fixtures/bin/fault-proxy"
# From the monitor's end to the state machine's DELETE of the worker Job: eks:runJob.sync learns of the end by
# polling, about once a minute at first, slowing to about every 5 minutes (AWS's Step Functions EKS page); scaled
# down here as the per-index backoff is.
DELETE_DELAY = 10.0


def key_of(rel, worker):
    """volume::shard::key_of: the S3 key (below the submission prefix) of a pod-volume path, or None."""
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None
    if len(parts) >= 3 and parts[0] == "agent" and parts[1] == f"agent{worker}":
        return rel
    if len(parts) == 2 and parts[0] == "containers-status":
        name = parts[1]
        for role in ("agent", "simulator"):
            head = f"{role}-{worker}."
            if name.startswith(head):
                kind = name[len(head) :]
                if kind in ("done", "failed", "status.json"):
                    return rel
                for k in ("start", "crash"):
                    n = kind[len(k) :]
                    if kind.startswith(k) and n.isdigit() and (n == "0" or not n.startswith("0")):
                        return rel
        return None
    if len(parts) >= 2 and parts[0] == "simulator":
        return "/".join(["simulator", f"worker-{worker}"] + parts[1:])
    return None


class FaultProxy:
    """fixtures/bin/fault-proxy in front of moto, answering a share of the S3 requests with 503 SlowDown."""

    def __init__(self, pod, out, target_port, rate, die):
        port_file = out / "fault-proxy.port"
        argv = [sys.executable, FAULT_PROXY, "--target", f"127.0.0.1:{target_port}", "--port-file", port_file]
        pod.spawn("fault-proxy", argv, dict(os.environ), out / "fault-proxy.log")
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if time.monotonic() > deadline:
                die("fault-proxy did not start within 30 s (see fault-proxy.log)")
            time.sleep(0.05)
        self.port = int(port_file.read_text())
        # A standing fault: every request drawn at `rate`, for the whole run.
        self.control("faults", {"mode": "http", "status": 503, "rate": rate, "count": 10**9})

    def control(self, what, doc=None):
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/__proxy__/{what}",
            data=None if doc is None else json.dumps(doc).encode(),
            method="GET" if doc is None else "POST",
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def faults(self):
        try:
            return self.control("stats").get("faulted", {}).get("http", 0)
        except OSError:
            return None


# The per-index backoff: Kubernetes' 10 s doubling up to 6 min, scaled down.
BACKOFF_BASE = 1.0
BACKOFF_MAX = 36.0


class K8sPod:
    """One pod of the worker Job: its containers' processes and its own volume folder."""

    def __init__(self, index, n, failures, ignored, folder):
        self.index, self.n, self.failures, self.ignored = index, n, failures, ignored
        self.name = f"submission-workers-{index}-{uuid.uuid4().hex[:5]}"
        self.uid = str(uuid.uuid4())
        self.folder = folder
        self.volume = folder / "volume"
        self.phase = "init"  # init -> running -> terminating -> ended
        self.result = None  # succeeded / failed / failindex / evicted / killed / lost / stale / deleted
        self.procs = {}
        self.started = time.monotonic()
        self.wall_started = time.time()
        self.term_at = None
        self.stopped_as = None  # "evicted" or "deleted": stopped from outside (SIGTERM, grace), its result then
        self.sidecar_signalled = False  # the native sidecar (uploader) has had its SIGTERM
        self.ignore = False  # a pod the controller no longer follows (stale, lost)


class IndexedJob:
    def __init__(self, args, lj):
        self.a, self.lj = args, lj
        self.out = Path(args.out).resolve()
        self.bin = Path(args.bin_dir).resolve()
        self.pod = lj.Pod()
        self.events = []
        self.pods = []
        self.t0 = time.monotonic()
        self.job_uid = str(uuid.uuid4())
        self.monitor_job_uid = str(uuid.uuid4())

    # -- the model ---------------------------------------------------------------------------------------------

    def model(self):
        a = self.a
        argv = [sys.executable, self.lj.MAKE_JOB, "--topology", "indexed", "--format", "json"]
        argv += ["--workers", a.workers, "--parallelism", a.parallelism or a.workers, "--routes", a.routes]
        argv += ["--submission-id", self.lj.SUBMISSION, "--challenge-id", self.lj.CHALLENGE]
        argv += ["--track-id", self.lj.PHASE, "--team-id", self.lj.TEAM]
        argv += ["--s3-bucket", self.lj.BUCKET, "--dynamodb-table", self.lj.TABLE]
        argv += (["--evalai-api-server", self.evalai.url] if self.evalai else []) + (
            ["--final-status"] if a.final_status else []
        )
        proc = subprocess.run([str(x) for x in argv], capture_output=True, text=True)
        if proc.returncode != 0:
            self.lj.die(f"make-job --topology indexed: {proc.stderr.strip()}")
        objects = json.loads(proc.stdout)
        if isinstance(objects, dict):
            objects = objects.get("items", [objects])
        jobs = [o for o in objects if o.get("kind") == "Job"]
        workers = next((j for j in jobs if j["spec"].get("completionMode") == "Indexed"), None)
        monitor = next((j for j in jobs if j is not workers), None)
        if not workers or not monitor:
            self.lj.die("make-job --topology indexed gave no Indexed worker Job and monitor Job")
        self.worker_spec = workers["spec"]
        pod = workers["spec"]["template"]["spec"]
        self.containers = {c["name"]: c for c in pod.get("initContainers", []) + pod["containers"]}
        for need in ("restore", "uploader", "simulator", "agent"):
            if need not in self.containers:
                self.lj.die(f"the worker pod of make-job's model has no {need!r} container")
        self.grace = min(float(pod.get("terminationGracePeriodSeconds", 30)), 30.0)
        mpod = monitor["spec"]["template"]["spec"]
        self.monitor_container = next(c for c in mpod["containers"])
        self.backoff_per_index = int(workers["spec"].get("backoffLimitPerIndex", 0))
        if a.backoff_limit_per_index is not None:
            self.backoff_per_index = a.backoff_limit_per_index
        self.fail_index_codes = set()
        for rule in (workers["spec"].get("podFailurePolicy") or {}).get("rules", []):
            codes = rule.get("onExitCodes") or {}
            if rule.get("action") == "FailIndex" and codes.get("operator") == "In":
                self.fail_index_codes.update(codes.get("values", []))

    def env(self, container, values):
        """The container's env on this machine: plain values from the model; the downward API's fields and the
        Secret's token from `values`; moto's endpoint and keys where the model gives AWS settings."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "EVALAI_", "FAKE_"))}
        for e in container.get("env", []):
            if "value" in e:
                if e["value"] != "":
                    env[e["name"]] = str(e["value"])
                continue
            src = e.get("valueFrom", {})
            if "fieldRef" in src:
                path = src["fieldRef"].get("fieldPath", "")
                if path in values:
                    env[e["name"]] = str(values[path])
            elif "secretKeyRef" in src and self.evalai:
                env[e["name"]] = self.lj.TOKEN
        if values.get("aws", True):
            env.update(self.moto_env)
        env.update(LOG_FORMAT="human")
        return env

    @staticmethod
    def mounted(container, path, volume):
        for m in container.get("volumeMounts", []):
            if m["mountPath"] == path:
                return volume / m.get("subPath", "")
        return None

    def command(self, container):
        argv = container.get("command", []) + container.get("args", [])
        return [self.bin / Path(argv[0]).name] + argv[1:]

    # -- set-up ------------------------------------------------------------------------------------------------

    def prepare(self):
        a, lj = self.a, self.lj
        import shutil

        if self.out.exists():
            shutil.rmtree(self.out)
        (self.out / "logs").mkdir(parents=True)
        self.sinks = self.out / "sinks"
        self.sinks.mkdir()
        records = []
        if a.replay:
            for f in sorted(Path(a.replay).glob("agent/agent*/agent_results.json")):
                doc = lj.read_json(f)
                if doc is None:
                    lj.die(f"{f}: not a JSON results file")
                records += doc.get("_checkpoint", {}).get("records", [])
        self.records_file = self.out / "records.json"
        self.records_file.write_text(json.dumps(records))
        self.evalai = lj.FakeEvalAi(self.pod, self.out) if a.evalai == "fake" else None
        self.moto = lj.Moto(self.pod, self.out)
        self.moto_env = dict(self.moto.env)
        self.proxy = None
        if a.s3_fault_rate:
            self.proxy = FaultProxy(self.pod, self.out, self.moto.port, a.s3_fault_rate, lj.die)
            self.moto_env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{self.proxy.port}"
        self.model()
        self.faults = {}
        for flag in ("kill_pod", "lose_pod", "evict_pod", "stale_pod", "same_counts_pod", "freeze_pod"):
            for spec in getattr(a, flag) or []:
                w, s = lj.parse_fault(spec, "--" + flag.replace("_", "-"), 5.0)
                if not 1 <= w <= a.workers:
                    lj.die(f"--{flag.replace('_', '-')} {spec}: worker {w} does not exist (1..{a.workers})")
                self.faults.setdefault(w, []).append([flag, s, False])
        self.index = {
            i: {"failures": 0, "ignored": 0, "state": "pending", "pod": None, "pods": [], "ready_at": 0.0}
            for i in range(1, a.workers + 1)
        }

    # -- pods ------------------------------------------------------------------------------------------------

    def event(self, msg):
        t = time.monotonic() - self.t0
        self.events.append({"t": time.time(), "event": msg})
        if not self.a.quiet:
            print(f"[{t:6.1f}s] {msg}", flush=True)

    def start_pod(self, i):
        st = self.index[i]
        n = len(st["pods"])
        p = K8sPod(i, n, st["failures"], st["ignored"], self.out / "pods" / f"w{i}.{n}")
        p.volume.mkdir(parents=True)
        st["pods"].append(p)
        st["pod"] = p
        st["state"] = "running"
        self.pods.append(p)
        values = {
            "metadata.name": p.name,
            "metadata.uid": p.uid,
            "metadata.annotations['batch.kubernetes.io/job-completion-index']": i - 1,
            "metadata.annotations['batch.kubernetes.io/job-index-failure-count']": p.failures,
            "metadata.annotations['batch.kubernetes.io/job-index-ignored-failure-count']": p.ignored,
            "metadata.labels['batch.kubernetes.io/job-completion-index']": i - 1,
            "metadata.labels['batch.kubernetes.io/controller-uid']": self.job_uid,
        }
        p.values = values
        c = self.containers["restore"]
        env = self.env(c, values)
        env["JOB_COMPLETION_INDEX"] = str(i - 1)
        argv = self.command(c) + ["--logs", self.mounted(c, "/logs", p.volume) or p.volume]
        p.procs["restore"] = self.pod.spawn(f"w{i}.{n}/restore", argv, env, p.folder / "restore.log", cwd=p.folder)
        self.event(f"worker {i}: pod {n} ({p.name}, failures {p.failures}, evicted {p.ignored}) starts")
        return p

    def start_containers(self, p):
        a, i = self.a, p.index
        values = p.values
        c = self.containers["uploader"]
        env = self.env(c, values)
        env["JOB_COMPLETION_INDEX"] = str(i - 1)
        if a.upload_period:
            env["UPLOAD_PERIOD"] = a.upload_period
        argv = self.command(c) + ["--logs", self.mounted(c, "/logs", p.volume) or p.volume]
        p.procs["uploader"] = self.pod.spawn(f"w{i}.{p.n}/uploader", argv, env, p.folder / "uploader.log", cwd=p.folder)
        port = self.lj.free_port_block(20, 1)
        local = dict(PEER_WAIT=a.peer_wait, READY_TIMEOUT=30, GRACE=2, MARKER_POLL=1, MAX_IDLE=a.max_idle)
        sim = self.containers["simulator"]
        sim_env = self.env(sim, dict(values, aws=False))
        sim_env.update({k: str(v) for k, v in local.items()}, CARLA_PORT=str(port), JOB_COMPLETION_INDEX=str(i - 1))
        status = self.mounted(sim, "/tmp/status", p.volume)
        if status:
            sim_env["STATUS_DIR"] = str(status)
        sim_env["FAKE_CARLA_LOG"] = str(p.folder / "carla.starts")
        saved = self.mounted(sim, "/home/carla/CarlaUE4/Saved", p.volume) or (p.volume / "simulator")
        saved.mkdir(parents=True, exist_ok=True)
        argv = self.command(sim) + ["--gpu", "none", "--log-file", saved / f"simulator-{i}.log", "--"]
        argv.append(self.lj.FIXTURES / "bin/fake-carla")
        p.procs["simulator"] = self.pod.spawn(f"w{i}.{p.n}/simulator", argv, sim_env, p.folder / "simulator.log")
        agent = self.containers["agent"]
        agent_env = self.env(agent, dict(values, aws=False))
        agent_env.update({k: str(v) for k, v in local.items()}, CARLA_PORT=str(port), JOB_COMPLETION_INDEX=str(i - 1))
        if status:
            agent_env["STATUS_DIR"] = str(status)
        agent_env.update(
            ROUTES=str(self.out / "no-routes-file.xml"),
            TEAM_AGENT="local_agent.py",
            FAKE_EVAL_ROUTE_SECONDS=str(a.route_seconds),
            FAKE_EVAL_ROUTE_SECONDS_SIGMA=str(a.route_seconds_sigma),
            FAKE_EVAL_RECORDS=str(self.records_file),
            FAKE_EVAL_LOG=str(p.folder / "evaluator.starts"),
        )
        # No ROUTES_SUBSET: the pods share one template, and the agent's supervisor computes its share from
        # ROUTE_COUNT, SUBMISSION_WORKERS and JOB_COMPLETION_INDEX, as in the cluster.
        # The model's CHECKPOINT_ENDPOINT names the worker's folder below the agent's mount of the pod volume.
        tmpl = next(
            (e["value"] for e in agent.get("env", []) if e["name"] == "CHECKPOINT_ENDPOINT"),
            "/tmp/agent/agent_results.json",
        )
        base = self.mounted(agent, "/tmp/agent", p.volume)
        if base is None:
            checkpoint = p.volume / f"agent/agent{i}/agent_results.json"
        else:
            checkpoint = base / Path(tmpl.replace("{worker}", str(i))).relative_to("/tmp/agent")
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        argv = self.command(agent) + ["--checkpoint", checkpoint, "--", self.lj.FIXTURES / "bin/fake-evaluator"]
        p.procs["agent"] = self.pod.spawn(f"w{i}.{p.n}/agent", argv, agent_env, p.folder / "agent.log")
        p.phase = "running"

    def pod_pids(self, p):
        out = []
        for proc in p.procs.values():
            if proc.end is None:
                out.append(proc.pid)
                out += self.tree(proc.pid)
        return out

    def tree(self, root):
        return self.lj.Pod.descendants(root)

    def signal_pod(self, p, sig, names=None):
        for name, proc in p.procs.items():
            if names is not None and name not in names:
                continue
            if proc.end is None:
                for pid in [proc.pid] + (self.tree(proc.pid) if sig == signal.SIGKILL else []):
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass

    def kill_pod(self, p):
        for _ in range(3):
            pids = self.pod_pids(p)
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
            self.pod.reap()

    # -- the controller ----------------------------------------------------------------------------------------

    def pod_ended(self, p, result):
        """The controller's reaction to pod p's end."""
        p.phase, p.result = "ended", result
        st = self.index[p.index]
        codes = {name: proc.rc for name, proc in p.procs.items()}
        self.event(f"worker {p.index}: pod {p.n} ended: {result} (exit codes {codes})")
        if p.ignore or st["pod"] is not p:
            return
        if result == "succeeded":
            st["state"] = "succeeded"
        elif result == "failindex":
            st["state"] = "failed"
        elif result == "lost":
            st["state"] = "failed"
        elif result == "deleted":
            st["state"] = "deleted"
        elif result == "evicted":
            st["ignored"] += 1
            st["state"] = "pending"
        else:
            st["failures"] += 1
            st["state"] = "failed" if st["failures"] > self.backoff_per_index else "pending"
            if st["state"] == "pending":
                # Kubernetes' per-index backoff (10 s doubling, up to 6 min), scaled down: 1 s doubling.
                delay = min(BACKOFF_BASE * 2 ** (st["failures"] - 1), BACKOFF_MAX)
                st["ready_at"] = time.monotonic() + delay
                self.event(f"worker {p.index}: replacement due after a backoff of {delay:g} s")
        if st["state"] == "failed":
            self.event(f"worker {p.index}: index failed")

    def step_pod(self, p, now):
        if p.phase == "init":
            r = p.procs["restore"]
            if r.end is not None:
                if r.rc == 0:
                    self.start_containers(p)
                else:
                    self.pod_ended(p, "failed")
            return
        mains = [p.procs["simulator"], p.procs["agent"]]
        if p.phase == "running" and all(m.end is not None for m in mains):
            p.phase = "terminating"
            p.term_at = now
        if p.phase == "terminating" and not p.sidecar_signalled and all(m.end is not None for m in mains):
            # Kubernetes' order: the native sidecar is signalled only once the main containers have exited (an
            # eviction's grace period runs from its start: what the mains used is not the sidecar's).
            p.sidecar_signalled = True
            if p.stopped_as:
                self.event(f"worker {p.index}: pod {p.n}'s main containers exited: SIGTERM to its uploader")
            self.signal_pod(p, signal.SIGTERM, ["uploader"])
        if p.phase == "terminating":
            up = p.procs["uploader"]
            if up.end is None and now - p.term_at > self.grace:
                self.event(f"worker {p.index}: pod {p.n} outlived the grace period: SIGKILL")
                self.kill_pod(p)
            if up.end is not None or now - p.term_at > self.grace + 1:
                self.kill_pod(p)
                if p.stopped_as:
                    self.pod_ended(p, p.stopped_as)
                    return
                rcs = [m.rc for m in mains]
                if all(rc == 0 for rc in rcs):
                    self.pod_ended(p, "succeeded")
                elif any(rc in self.fail_index_codes for rc in rcs):
                    self.pod_ended(p, "failindex")
                else:
                    self.pod_ended(p, "failed")

    def faults_due(self, now):
        for w, faults in self.faults.items():
            p = self.index[w]["pod"]
            if p is None or p.phase not in ("running",):
                continue
            for f in faults:
                flag, at, fired = f
                if fired or p.n != 0 or now - p.started < at:
                    continue
                f[2] = True
                if flag == "kill_pod":
                    self.event(f"worker {w}: pod {p.n} killed (SIGKILL)")
                    self.kill_pod(p)
                    p.phase = "killed"
                    self.pod_ended(p, "killed")
                elif flag == "lose_pod":
                    self.event(f"worker {w}: pod {p.n} lost for good (SIGKILL on its last try)")
                    self.kill_pod(p)
                    p.phase = "killed"
                    self.pod_ended(p, "lost")
                elif flag == "evict_pod":
                    self.event(f"worker {w}: pod {p.n} evicted (SIGTERM to the main containers, then the sidecar)")
                    self.stop_pod(p, now, "evicted")
                elif flag == "stale_pod":
                    self.event(f"worker {w}: pod {p.n} partitioned: a replacement starts beside it")
                    p.ignore = True
                    st = self.index[w]
                    st["failures"] += 1
                    self.start_pod(w)
                elif flag == "freeze_pod":
                    self.event(f"worker {w}: pod {p.n}'s supervisors frozen (SIGSTOP): no cancel reaches them")
                    self.signal_pod(p, signal.SIGSTOP, ["simulator", "agent"])
                elif flag == "same_counts_pod":
                    self.event(f"worker {w}: pod {p.n} duplicated: a pod with the same failure counts starts beside it")
                    p.ignore = True
                    self.start_pod(w)

    def schedule(self):
        """Up to the parallelism: first the indexes that never started (in index order), then those whose
        replacement is due (their per-index backoff past), as the Job controller queues them."""
        active = sum(1 for st in self.index.values() if st["state"] == "running")
        now = time.monotonic()
        pending = [(i, st) for i, st in sorted(self.index.items()) if st["state"] == "pending"]
        queue = [x for x in pending if not x[1]["pods"]] + [x for x in pending if x[1]["pods"]]
        for i, st in queue:
            if active >= (self.a.parallelism or self.a.workers):
                break
            if st["ready_at"] > now:
                continue
            self.start_pod(i)
            active += 1

    def start_monitor(self):
        c = self.monitor_container
        env = self.env(c, {"metadata.labels['batch.kubernetes.io/controller-uid']": self.monitor_job_uid})
        if self.a.backoff_limit_per_index is not None:
            env["BACKOFF_LIMIT_PER_INDEX"] = str(self.backoff_per_index)
        if self.a.monitor_period:
            env["MONITOR_PERIOD"] = self.a.monitor_period
        if self.a.worker_silence:
            env["WORKER_SILENCE"] = self.a.worker_silence
        folder = self.out / "monitor"
        vol = folder / "volume"
        vol.mkdir(parents=True, exist_ok=True)
        argv = self.command(c) + ["--logs", vol, "--status-period", self.a.status_period]
        # The pod's termination message file (Kubernetes' /dev/termination-log), here beside the monitor's folder.
        argv += ["--evalai-rpm", self.a.evalai_rpm, "--termination-log", folder / "termination-log"]
        if not self.evalai:
            argv += ["--local-evalai", self.sinks / "logcopy-local"]
        self.monitor_runs = getattr(self, "monitor_runs", 0) + 1
        return self.pod.spawn(f"monitor.{self.monitor_runs}", argv, env, folder / "monitor.log", cwd=self.sinks)

    # -- the run -----------------------------------------------------------------------------------------------

    def run(self):
        a = self.a
        self.prepare()
        self.t0 = time.monotonic()
        monitor = self.start_monitor()
        monitor_killed = False
        cancelled = False
        deadline = self.t0 + a.timeout
        while True:
            self.pod.reap()
            now = time.monotonic()
            self.schedule()
            for p in list(self.pods):
                if p.phase not in ("ended", "killed"):
                    self.step_pod(p, now)
            self.faults_due(now)
            if a.kill_monitor is not None and not monitor_killed and now - self.t0 >= a.kill_monitor:
                monitor_killed = True
                self.event("monitor killed (SIGKILL); restarted with its folder")
                for pid in [monitor.pid] + self.tree(monitor.pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                while monitor.end is None:
                    time.sleep(0.02)
                    self.pod.reap()
                monitor = self.start_monitor()
            if a.cancel_after is not None and not cancelled and now - self.t0 >= a.cancel_after:
                cancelled = True
                self.cancel_at = time.time()
                if self.evalai:
                    self.evalai.cancel()
                else:
                    (self.sinks / "logcopy-local" / "evalai-cancel").parent.mkdir(parents=True, exist_ok=True)
                    (self.sinks / "logcopy-local" / "evalai-cancel").write_bytes(b"")
                self.event("cancel made on EvalAI")
            if monitor.end is not None:
                self.event(f"monitor exited {monitor.rc}")
                break
            if now > deadline:
                self.event(f"timeout after {a.timeout} s")
                break
            time.sleep(0.05)
        # The state machine's last step (make-job --format step-functions): the worker Job deleted once the monitor
        # ended, which the state machine learns by polling the monitor Job (DELETE_DELAY here). Meanwhile the pods
        # end on their own (done, cancelled); one still running then gets the deletion's SIGTERM (main containers,
        # then the sidecar once they exited, one grace period), then SIGKILL.
        self.step_pods_until(time.monotonic() + DELETE_DELAY)
        now = time.monotonic()
        for p in self.pods:
            # A pod already terminating (its main containers exited, its uploader flushing) ends as it would.
            if p.phase not in ("init", "running"):
                continue
            self.event(f"worker {p.index}: pod {p.n} deleted with the worker Job (SIGTERM, grace period)")
            if p.phase == "init":
                # Its init container (restore) is killed at once: the model gives no grace period to an init step.
                self.kill_pod(p)
                self.pod_ended(p, "deleted")
            else:
                self.stop_pod(p, now, "deleted")
        self.step_pods_until(time.monotonic() + self.grace + 5)
        for p in self.pods:
            self.kill_pod(p)
        self.pod.reap()
        return self.report(monitor)

    def stop_pod(self, p, now, result):
        """A pod stopped from outside (an eviction, the Job's deletion): SIGTERM to its main containers, its sidecar
        after they exit (step_pod), all within one grace period; it ends with `result`."""
        p.stopped_as = result
        p.phase = "terminating"
        p.term_at = now
        self.signal_pod(p, signal.SIGTERM, ["simulator", "agent"])

    def step_pods_until(self, deadline):
        while any(p.phase not in ("ended", "killed") for p in self.pods) and time.monotonic() < deadline:
            self.pod.reap()
            for p in list(self.pods):
                if p.phase not in ("ended", "killed"):
                    self.step_pod(p, time.monotonic())
            time.sleep(0.05)

    def final_status(self, monitor):
        try:
            text = Path(monitor.log).read_text(errors="replace")
        except OSError:
            return None
        found = None
        for line in text.splitlines():
            if "final status " in line and "logcopy ends" in line:
                found = line.split("final status ", 1)[1].split(":", 1)[0].strip()
        return found

    def report(self, monitor):
        a, lj = self.a, self.lj
        objects = self.moto.objects()
        merged = objects.get("agent/agent_results.json")
        route_ids = []
        if merged:
            try:
                doc = json.loads(merged)
                route_ids = [r.get("route_id") for r in doc.get("_checkpoint", {}).get("records", [])]
            except ValueError:
                pass
        # What each shard's newest pod produced, against S3.
        mismatched = []
        for i, st in self.index.items():
            p = st["pods"][-1] if st["pods"] else None
            if p is None or not p.volume.exists():
                continue
            for rel, digest in lj.tree_hashes(p.volume).items():
                key = key_of(rel, i)
                if key is None or rel.startswith("logcopy/"):
                    continue
                have = objects.get(key)
                if have is None or lj.hashlib.sha256(have).hexdigest() != digest:
                    mismatched.append(key)
        status = self.final_status(monitor)
        # `logcopy status` reads the monitor's working volume as it reads a generation 1 volume.
        argv = [self.bin / "logcopy", "status", "--json", "--logs", self.out / "monitor/volume"]
        argv += ["--workers", a.workers, "--route-count", a.routes]
        proc = subprocess.run([str(x) for x in argv], capture_output=True, text=True)
        try:
            monitor_status = json.loads(proc.stdout)
        except ValueError:
            monitor_status = {"error": proc.stderr.strip()[-500:]}
        try:
            termination = (self.out / "monitor/termination-log").read_text()
        except OSError:
            termination = None
        summary = {
            "out": str(self.out),
            "topology": "indexed",
            "final_status": status,
            "monitor_rc": monitor.rc,
            "events": self.events,
            "indexes": {
                str(i): {
                    "state": st["state"],
                    "failures": st["failures"],
                    "ignored": st["ignored"],
                    "pods": [
                        {
                            "n": p.n,
                            "result": p.result,
                            "name": p.name,
                            "started": p.wall_started,
                            "evaluator_started": mtime(p.folder / "evaluator.starts"),
                            "exits": {k: pr.rc for k, pr in p.procs.items()},
                        }
                        for p in st["pods"]
                    ],
                }
                for i, st in self.index.items()
            },
            "merged_routes": route_ids,
            "duplicate_routes": sorted({r for r in route_ids if route_ids.count(r) > 1}),
            "s3_keys": sorted(objects),
            "s3_mismatched": sorted(mismatched),
            "dynamodb": self.moto.item(),
            "s3_faults": self.proxy.faults() if self.proxy else 0,
            "evalai_requests": self.evalai.requests() if self.evalai else None,
            "processes": [
                {"name": pr.name, "pid": pr.pid, "start": pr.start, "end": pr.end, "rc": pr.rc} for pr in self.pod.procs
            ],
            "cancel_at": getattr(self, "cancel_at", None),
            "monitor_status": monitor_status,
            "monitor_termination": termination,
        }
        if a.summary:
            Path(a.summary).write_text(json.dumps(summary, indent=2, default=str))
        print(f"final status: {status or 'none'}", flush=True)
        expected = "CANCELLED" if a.cancel_after is not None else ("FAILED" if a.lose_pod else "FINISHED")
        return 0 if monitor.rc == 0 and status == expected else 1


def mtime(path):
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def run(args, lj):
    job = IndexedJob(args, lj)
    try:
        return job.run()
    finally:
        job.pod.kill_all()
        job.pod.reap()
