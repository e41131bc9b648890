"""Tests of docker/k8s/make-job's command line: the ids are required positive integers, every flag says what it is.

A manifest with a default or malformed id would start a Job whose logcopy exits 2 at once and, under restartPolicy
OnFailure, restarts until the Job's retries are spent (issue 19).
"""

import importlib.machinery
import importlib.util
import json
import re
import subprocess
import sys
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
IDS = {"--submission-id": "111111", "--challenge-id": "22", "--track-id": "333", "--team-id": "4444"}


def make_job(*args):
    return subprocess.run([sys.executable, str(HERE / "make-job"), *args], capture_output=True, text=True)


def ids(**override):
    out = []
    for flag, value in IDS.items():
        value = override.get(flag, value)
        if value is not None:
            out += [flag, value]
    return out


def jsonpath(path, state):
    """The `$.a.b` paths make-job writes."""
    assert path.startswith("$"), path
    v = state
    for part in filter(None, path[1:].split(".")):
        v = v[part]
    return v


def resolve(value, state):
    """A Step Functions Parameters block resolved against `state`: `k.$` fields by JSONPath or States.Format."""
    if isinstance(value, list):
        return [resolve(v, state) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for k, v in value.items():
        if k.endswith(".$"):
            m = re.fullmatch(r"States\.Format\('((?:[^'\\]|\\.)*)', (.*)\)", v)
            if m:
                args = [jsonpath(p.strip(), state) for p in m.group(2).split(",")]
                parts = re.split(r"(?<!\\)\{\}", m.group(1))
                text = parts[0] + "".join(str(a) + p for a, p in zip(args, parts[1:]))
                out[k[:-2]] = re.sub(r"\\(.)", r"\1", text)
            else:
                out[k[:-2]] = jsonpath(v, state)
        else:
            out[k] = resolve(v, state)
    return out


class MakeJob(unittest.TestCase):
    def test_the_ids_are_required(self):
        r = make_job()
        self.assertEqual(r.returncode, 2, r.stderr)
        for flag in IDS:
            self.assertIn(flag, r.stderr)
        for flag in IDS:
            r = make_job(*ids(**{flag: None}))
            self.assertEqual(r.returncode, 2, f"{flag} missing: {r.stdout[:200]}")
            self.assertIn(f"required: {flag}", r.stderr)

    def test_an_id_must_be_a_positive_integer(self):
        for flag in IDS:
            for bad in ["abc", "0", "-1", "1.5", "", " ", "1e3", "0x10"]:
                r = make_job(*ids(**{flag: bad}))
                self.assertEqual(r.returncode, 2, f"{flag} {bad!r} accepted")
                self.assertIn(f"argument {flag}:", r.stderr)
                self.assertIn("not a positive integer", r.stderr)

    def test_the_ids_reach_every_container(self):
        r = make_job(*ids(**{"--submission-id": "0042"}), "--format", "json")
        self.assertEqual(r.returncode, 0, r.stderr)
        job = json.loads(r.stdout)
        self.assertEqual(job["metadata"]["name"], "submission-42")
        spec = job["spec"]["template"]["spec"]
        env = {c["name"]: {e["name"]: e.get("value") for e in c.get("env", [])} for c in spec["initContainers"]}
        env.update({c["name"]: {e["name"]: e.get("value") for e in c.get("env", [])} for c in spec["containers"]})
        self.assertEqual(env["restore"]["SUBMISSION_ID"], "42")
        want = {"SUBMISSION_ID": "42", "CHALLENGE_ID": "22", "TRACK_ID": "333", "TEAM_ID": "4444"}
        self.assertEqual({k: env["logcopy"][k] for k in want}, want)

    def test_metrics_open_the_port_and_annotate_the_pod(self):
        def logcopy_and_pod(*flags):
            r = make_job(*ids(), "--format", "json", *flags)
            self.assertEqual(r.returncode, 0, r.stderr)
            pod = json.loads(r.stdout)["spec"]["template"]
            (logcopy,) = [c for c in pod["spec"]["containers"] if c["name"] == "logcopy"]
            return logcopy, pod

        logcopy, pod = logcopy_and_pod()
        self.assertNotIn("ports", logcopy)
        self.assertNotIn("annotations", pod["metadata"])
        self.assertNotIn("METRICS_ADDR", [e["name"] for e in logcopy["env"]])

        logcopy, pod = logcopy_and_pod("--metrics")
        self.assertEqual(logcopy["ports"], [{"name": "metrics", "containerPort": 9100, "protocol": "TCP"}])
        self.assertEqual(
            pod["metadata"]["annotations"],
            {"prometheus.io/scrape": "true", "prometheus.io/port": "9100", "prometheus.io/path": "/metrics"},
        )
        self.assertIn({"name": "METRICS_ADDR", "value": "0.0.0.0:9100"}, logcopy["env"])
        r = make_job(*ids(), "--metrics")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn('prometheus.io/scrape: "true"', r.stdout)
        self.assertIn('prometheus.io/port: "9100"', r.stdout)

    def indexed(self, *flags):
        r = make_job(*ids(), "--topology", "indexed", "--format", "json", *flags)
        self.assertEqual(r.returncode, 0, r.stderr)
        docs = json.loads(r.stdout)
        self.assertIsInstance(docs, list)
        return {(d["kind"], d["metadata"]["name"]): d for d in docs}

    def test_indexed_emits_the_worker_job_the_monitor_job_their_accounts_and_policies(self):
        docs = self.indexed("--workers", "8", "--routes", "20")
        self.assertEqual(
            sorted(docs),
            [
                ("Job", "submission-111111-monitor"),
                ("Job", "submission-111111-workers"),
                ("NetworkPolicy", "leaderboard-submission-monitor-egress"),
                ("NetworkPolicy", "leaderboard-submission-worker-egress"),
                ("ServiceAccount", "submission-monitor"),
                ("ServiceAccount", "submission-worker"),
            ],
        )
        spec = docs[("Job", "submission-111111-workers")]["spec"]
        self.assertEqual(spec["completionMode"], "Indexed")
        self.assertEqual((spec["completions"], spec["parallelism"]), (8, 8), "P defaults to S")
        self.assertEqual(spec["backoffLimitPerIndex"], 2)
        self.assertNotIn("maxFailedIndexes", spec, "every shard runs")
        self.assertNotIn("backoffLimit", spec)
        self.assertEqual(spec["podReplacementPolicy"], "Failed")
        self.assertEqual(spec["ttlSecondsAfterFinished"], 86400)
        rules = spec["podFailurePolicy"]["rules"]
        self.assertEqual(rules[0], {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]})
        fail_index = {r["onExitCodes"]["containerName"]: r["onExitCodes"]["values"] for r in rules if r["action"] == "FailIndex"}
        self.assertEqual(fail_index, {"simulator": [41, 42], "agent": [41, 42]})
        fail_job = {r["onExitCodes"]["containerName"]: r["onExitCodes"]["values"] for r in rules if r["action"] == "FailJob"}
        self.assertEqual(fail_job, {"simulator": [2], "agent": [2]})
        pod = spec["template"]
        self.assertEqual(pod["metadata"]["annotations"]["eks.amazonaws.com/skip-containers"], "simulator,agent")
        self.assertIs(pod["spec"]["automountServiceAccountToken"], False)
        self.assertEqual(pod["spec"]["restartPolicy"], "Never")
        init = {c["name"]: c for c in pod["spec"]["initContainers"]}
        main = {c["name"]: c for c in pod["spec"]["containers"]}
        self.assertEqual(list(init), ["leaderboard-tree", "restore", "uploader"])
        self.assertEqual(list(main), ["simulator", "agent"])
        self.assertEqual(init["uploader"]["restartPolicy"], "Always", "a native sidecar")
        self.assertEqual(init["uploader"]["command"], ["/usr/local/bin/logcopy", "upload"])
        self.assertEqual(init["restore"]["command"][1:], ["restore", "--worker"])
        mounts = {n: {m["name"] for m in c.get("volumeMounts", [])} for n, c in {**init, **main}.items()}
        self.assertEqual({n for n, m in mounts.items() if "aws-iam-token" in m}, {"restore", "uploader"})
        self.assertEqual({n for n, m in mounts.items() if "logs" in m}, {"restore", "uploader", "simulator", "agent"})
        up = {e["name"]: e for e in init["uploader"]["env"]}
        self.assertEqual(up["SUBMISSION_WORKERS"]["value"], "8")
        self.assertEqual(
            up["POD_FAILURE_COUNT"]["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.annotations['batch.kubernetes.io/job-index-failure-count']",
        )
        self.assertEqual(up["POD_UID"]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.uid")
        agent = {e["name"]: e.get("value") for e in main["agent"]["env"]}
        self.assertEqual((agent["TOPOLOGY"], agent["SUBMISSION_WORKERS"], agent["ROUTE_COUNT"]), ("indexed", "8", "20"))
        self.assertNotIn("ROUTES_SUBSET", agent, "the pods share one template: the agent computes its share")
        self.assertEqual(main["agent"]["resources"], {"limits": {"nvidia.com/gpu": 1}})
        for c in ("agent", "simulator"):
            names = {e["name"] for e in main[c]["env"]}
            self.assertFalse({n for n in names if n.startswith(("AWS_", "EVALAI_"))}, c)
        self.assertEqual({e["name"]: e.get("value") for e in main["simulator"]["env"]}["TOPOLOGY"], "indexed")
        monitor = docs[("Job", "submission-111111-monitor")]
        (mc,) = monitor["spec"]["template"]["spec"]["containers"]
        menv = {e["name"]: e for e in mc["env"]}
        self.assertEqual(mc["command"], ["/usr/local/bin/logcopy", "monitor"])
        self.assertEqual(menv["EVALAI_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"], "evalai-auth-token")
        self.assertEqual((menv["SUBMISSION_WORKERS"]["value"], menv["ROUTE_COUNT"]["value"]), ("8", "20"))
        self.assertEqual((menv["MONITOR_PERIOD"]["value"], menv["WORKER_SILENCE"]["value"]), ("5s", "20m"))
        spec = docs[("Job", "submission-111111-workers")]["spec"]
        self.assertEqual(menv["BACKOFF_LIMIT_PER_INDEX"]["value"], str(spec["backoffLimitPerIndex"]))
        self.assertEqual(
            menv["MONITOR_JOB_UID"]["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.labels['batch.kubernetes.io/controller-uid']",
        )
        self.assertEqual(mc["terminationMessagePolicy"], "FallbackToLogsOnError")
        mspec = monitor["spec"]
        self.assertEqual((mspec["template"]["spec"]["restartPolicy"], mspec["backoffLimit"]), ("OnFailure", 4))
        self.assertNotIn("podFailurePolicy", mspec, "Kubernetes rejects one beside OnFailure")
        policy = docs[("NetworkPolicy", "leaderboard-submission-worker-egress")]["spec"]
        https = [r for r in policy["egress"] if r.get("to")]
        self.assertEqual(https[0]["to"][0]["ipBlock"]["except"], ["169.254.169.254/32"])

    def test_indexed_egress_limited_to_the_cidrs_given(self):
        docs = self.indexed(
            "--worker-egress-cidr", "52.218.0.0/17", "--worker-egress-cidr", "10.0.0.0/16",
            "--worker-egress-cidr", "169.254.0.0/16", "--worker-egress-cidr", "::/0",
        )
        https = [r for r in docs[("NetworkPolicy", "leaderboard-submission-worker-egress")]["spec"]["egress"] if r.get("to")]
        self.assertEqual(
            [p["ipBlock"] for p in https[0]["to"]],
            [
                {"cidr": "52.218.0.0/17"},
                {"cidr": "10.0.0.0/16"},
                {"cidr": "169.254.0.0/16", "except": ["169.254.169.254/32"]},
                {"cidr": "::/0", "except": ["fd00:ec2::254/128"]},
            ],
        )
        self.assertEqual(https[0]["ports"], [{"protocol": "TCP", "port": 443}])
        note = "the worker pods may reach any address on 443"
        self.assertIn(note, make_job(*ids(), "--topology", "indexed").stderr, "the open default is pointed out")
        r = make_job(*ids(), "--topology", "indexed", "--worker-egress-cidr", "10.0.0.0/16")
        self.assertNotIn(note, r.stderr)
        self.assertNotIn(note, make_job(*ids()).stderr, "generation 1 has no such policy")
        monitor = docs[("NetworkPolicy", "leaderboard-submission-monitor-egress")]["spec"]["egress"][1]["to"]
        self.assertEqual(monitor, [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.169.254/32"]}}])
        for bad, msg in [
            (["--topology", "indexed", "--worker-egress-cidr", "10.0.0.1/16"], "--worker-egress-cidr '10.0.0.1/16': "),
            (["--topology", "indexed", "--monitor-egress-cidr", "s3"], "--monitor-egress-cidr 's3': "),
            (["--worker-egress-cidr", "10.0.0.0/16"], "need --topology indexed"),
            (["--topology", "indexed", "--worker-egress-cidr", "169.254.169.254/32"], "the instance metadata service"),
            (["--topology", "indexed", "--monitor-egress-cidr", "fd00:ec2::254/128"], "the instance metadata service"),
        ]:
            r = make_job(*ids(), *bad)
            self.assertEqual(r.returncode, 2, bad)
            self.assertIn(msg, r.stderr)

    def test_indexed_parallelism_and_limits(self):
        spec = self.indexed("--workers", "64", "--routes", "100", "--parallelism", "4")[("Job", "submission-111111-workers")]["spec"]
        self.assertEqual((spec["completions"], spec["parallelism"]), (64, 4))
        for bad, msg in [
            (["--workers", "4", "--parallelism", "5"], "--parallelism must be 1..--workers"),
            (["--workers", "4", "--parallelism", "0"], "--parallelism must be 1..--workers"),
            (["--workers", "30", "--routes", "20"], "--routes >= --workers"),
            (["--workers", "2000", "--routes", "5000"], "--workers must be 1..1024"),
            (["--backoff-limit-per-index", "-1"], "--backoff-limit-per-index must be 0 or more"),
        ]:
            r = make_job(*ids(), "--topology", "indexed", *bad)
            self.assertEqual(r.returncode, 2, bad)
            self.assertIn(msg, r.stderr)
        r = make_job(*ids(), "--parallelism", "2")
        self.assertEqual(r.returncode, 2)
        self.assertIn("--parallelism needs --topology indexed", r.stderr)

    def test_indexed_yaml_is_one_document_per_object(self):
        r = make_job(*ids(), "--topology", "indexed")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.count("\n---\n") + r.stdout.startswith("---"), 6, r.stdout[:300])

    def test_step_functions_resolves_to_the_same_job(self):
        """The task's `.$` fields, resolved against an input as Step Functions resolves them, give exactly the Job
        that make-job writes for the same values."""
        values = {"--submission-id": "987", "--challenge-id": "5", "--track-id": "66", "--team-id": "777"}
        extra = ["--participant-image", "team/agent:7", "--evalai-secret", "evalai-token-9", "--resume", "1"]
        state = {
            "data": {
                "submission": {
                    "submission_id": "987",
                    "challenge_id": "5",
                    "track_id": "66",
                    "team_id": "777",
                    "resume": "1",
                    "submitted_image_uri": "team/agent:7",
                },
                "evalai": {"token_secret": "evalai-token-9"},
                "cluster": {"name": "lb", "certificate_authority": "ca", "endpoint": "https://k8s"},
            }
        }
        for topology in ("pod", "indexed"):
            r = make_job(*ids(**values), *extra, "--topology", topology, "--format", "step-functions", "--sfn-input", "$.data")
            self.assertEqual(r.returncode, 0, r.stderr)
            task_doc = json.loads(r.stdout)
            self.assertNotIn("@@", r.stdout, "no sentinel left")
            self.assertNotIn("987", r.stdout, "no submission value is written literally")
            if topology == "pod":
                tasks = [task_doc]
                self.assertEqual(task_doc["Resource"], "arn:aws:states:::eks:runJob.sync")
            else:
                tasks = self.check_indexed_flow(task_doc, state)
            jobs = [resolve(t["Parameters"], state) for t in tasks]
            for j in jobs:
                self.assertEqual((j["ClusterName"], j["Endpoint"], j["Namespace"]), ("lb", "https://k8s", "default"))
            r = make_job(*ids(**values), *extra, "--topology", topology, "--format", "json")
            want = json.loads(r.stdout)
            want = [want] if topology == "pod" else [d for d in want if d["kind"] == "Job"]
            self.assertEqual([j["Job"] for j in jobs], want)

    def check_indexed_flow(self, parallel, state):
        """The indexed state: the worker Job created, the monitor Job run to its end, then the worker Job deleted
        (also when the monitor failed, which then fails the state). Returns the two runJob tasks."""
        self.assertEqual(parallel["Type"], "Parallel")
        (branch,) = parallel["Branches"]
        states = branch["States"]
        order, name = [], branch["StartAt"]
        while name:
            order.append(name)
            name = states[name].get("Next")
        start, run, stop = (states[n] for n in order)
        self.assertEqual(start["Resource"], "arn:aws:states:::eks:runJob", "created, not waited for")
        self.assertEqual(start["Parameters"]["Job"]["metadata"]["labels"]["leaderboard/role"], "worker")
        self.assertEqual(run["Resource"], "arn:aws:states:::eks:runJob.sync")
        self.assertEqual(run["Parameters"]["Job"]["metadata"]["labels"]["leaderboard/role"], "monitor")
        self.assertTrue(stop.get("End"))
        worker_name = "submission-{}-workers".format(state["data"]["submission"]["submission_id"])
        for delete in (stop, states[run["Catch"][0]["Next"]]):
            call = resolve(delete["Parameters"], state)
            self.assertEqual(delete["Resource"], "arn:aws:states:::eks:call")
            self.assertEqual(
                (call["Method"], call["Path"], call["QueryParameters"]),
                ("DELETE", f"/apis/batch/v1/namespaces/default/jobs/{worker_name}", {"propagationPolicy": ["Background"]}),
            )
        failed = states[states[run["Catch"][0]["Next"]]["Next"]]
        self.assertEqual(failed["Type"], "Fail")
        return [start, run]

    def test_every_flag_has_help(self):
        loader = importlib.machinery.SourceFileLoader("make_job", str(HERE / "make-job"))
        spec = importlib.util.spec_from_loader("make_job", loader)
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
        actions = [a for a in module.parser()._actions if a.option_strings and a.dest != "help"]
        self.assertGreater(len(actions), 20)
        for a in actions:
            self.assertTrue(a.help and a.help.strip(), f"{a.option_strings[0]} has no help text")


if __name__ == "__main__":
    unittest.main()
