"""Tests of docker/k8s/check-manifest: it passes our manifest and finds each mistake it is there to find.

Needs PyYAML (.venv) and the binaries in CHECK_BIN_DIR (default target/debug), whose --help it reads.
"""

import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
BIN = os.environ.get("CHECK_BIN_DIR", str(Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug"))


# The committed example's placeholder ids (run-scripts/lint-deploy's).
IDS = ["--submission-id", "111111", "--challenge-id", "22", "--track-id", "333", "--team-id", "4444"]


def manifest():
    out = subprocess.run([sys.executable, str(HERE / "make-job"), *IDS], capture_output=True, text=True, check=True)
    return yaml.safe_load(out.stdout)


def indexed():
    """make-job --topology indexed: the objects, as a list."""
    out = subprocess.run(
        [sys.executable, str(HERE / "make-job"), *IDS, "--topology", "indexed", "--workers", "8", "--routes", "20"],
        capture_output=True,
        text=True,
        check=True,
    )
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def of(docs, kind, suffix=""):
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix))


def check(doc):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump_all(doc if isinstance(doc, list) else [doc], f)
    try:
        r = subprocess.run(
            [sys.executable, str(HERE / "check-manifest"), "--bin-dir", BIN, f.name], capture_output=True, text=True
        )
    finally:
        os.unlink(f.name)
    return r.returncode, r.stdout + r.stderr


def container(doc, name):
    spec = doc["spec"]["template"]["spec"]
    return next(c for c in spec["initContainers"] + spec["containers"] if c["name"] == name)


class CheckManifest(unittest.TestCase):
    def test_our_manifest_passes(self):
        rc, out = check(manifest())
        self.assertEqual(rc, 0, out)

    def test_pod_failure_policy_beside_on_failure(self):
        doc = manifest()
        doc["spec"]["podFailurePolicy"] = {
            "rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]
        }
        rc, out = check(doc)
        self.assertEqual(rc, 1)
        self.assertIn("podFailurePolicy beside restartPolicy OnFailure", out)

    def test_an_environment_variable_no_binary_reads(self):
        doc = manifest()
        container(doc, "logcopy")["env"].append({"name": "LOGCOPY_PERIOD", "value": "5"})
        container(doc, "agent-2")["env"].append({"name": "ROUTE_SUBSET", "value": "0-4"})
        rc, out = check(doc)
        self.assertEqual(rc, 1)
        self.assertIn("container logcopy: env LOGCOPY_PERIOD is read by no binary", out)
        self.assertIn("container agent-2: env ROUTE_SUBSET is read by no binary", out)
        self.assertEqual(out.count("is read by no binary"), 2, out)

    def test_a_mount_path_the_defaults_do_not_use(self):
        doc = manifest()
        container(doc, "logcopy")["volumeMounts"][0]["mountPath"] = "/data/logs"
        container(doc, "simulator-1")["volumeMounts"][1]["mountPath"] = "/home/carla/Saved"
        container(doc, "restore")["volumeMounts"][0]["mountPath"] = "/tmp/logs"
        rc, out = check(doc)
        self.assertEqual(rc, 1)
        for name, path in (("logcopy", "/data/logs"), ("simulator-1", "/home/carla/Saved"), ("restore", "/tmp/logs")):
            self.assertIn(f"container {name}: mountPath {path} is not a path", out)

    def test_drop_in_scripts_are_checked_as_their_binary(self):
        doc = manifest()
        agent = container(doc, "agent-1")
        agent["command"] = ["/bin/bash", "-c"]
        agent["args"] = ["bash /workspace/leaderboard/run_leaderboard.sh"]
        agent["env"].append({"name": "MAX_IDL", "value": "800"})
        rc, out = check(doc)
        self.assertEqual(rc, 1)
        self.assertIn("container agent-1: env MAX_IDL is read by no binary", out)


class CheckIndexed(unittest.TestCase):
    def setUp(self):
        self.docs = indexed()
        self.job = of(self.docs, "Job", "-workers")
        self.pod = self.job["spec"]["template"]

    def fails_with(self, *needles):
        rc, out = check(self.docs)
        self.assertEqual(rc, 1, out)
        for n in needles:
            self.assertIn(n, out)
        return out

    def test_the_indexed_manifest_passes(self):
        rc, out = check(self.docs)
        self.assertEqual(rc, 0, out)

    def test_make_job_uses_the_supervisors_exit_codes(self):
        """make-job's constants against the supervisor's table: a change on either side fails here."""
        out = subprocess.run([str(Path(BIN) / "supervisor"), "exit-codes"], capture_output=True, text=True, check=True)
        table = {row["name"]: (row["code"], row["action"]) for row in json.loads(out.stdout)}
        loader = importlib.machinery.SourceFileLoader("make_job", str(HERE / "make-job"))
        module = importlib.util.module_from_spec(importlib.util.spec_from_loader("make_job", loader))
        loader.exec_module(module)
        self.assertEqual(table["attempt-budget-spent"], (module.EXIT_BUDGET_SPENT, "FailIndex"))
        self.assertEqual(table["participant-fault"], (module.EXIT_PARTICIPANT_FAULT, "FailIndex"))
        self.assertEqual(table["config-error"], (module.EXIT_CONFIG_ERROR, "FailJob"))

    def test_credentials_in_a_participant_container(self):
        agent, simulator = container(self.job, "agent"), container(self.job, "simulator")
        agent["env"].append({"name": "AWS_SECRET_ACCESS_KEY", "value": "x"})
        agent["env"].append(
            {"name": "SOMETHING", "valueFrom": {"secretKeyRef": {"name": "evalai-auth-token", "key": "token"}}}
        )
        simulator["envFrom"] = [{"secretRef": {"name": "aws-keys"}}]
        agent["volumeMounts"].append({"name": "aws-iam-token", "mountPath": "/var/run/secrets/eks.amazonaws.com/x"})
        self.fails_with(
            "container agent: env AWS_SECRET_ACCESS_KEY (a credential's name) in a participant container",
            "container agent: env SOMETHING (from Secret evalai-auth-token) in a participant container",
            "container simulator: envFrom Secret aws-keys in a participant container",
            "container agent: mounts volume aws-iam-token (a Secret or service-account token)",
        )

    def test_the_pods_api_token_is_mounted(self):
        del self.pod["spec"]["automountServiceAccountToken"]
        self.fails_with("automountServiceAccountToken is not false")

    def test_the_webhook_would_reach_the_agent(self):
        self.pod["metadata"]["annotations"]["eks.amazonaws.com/skip-containers"] = "simulator"
        out = self.fails_with("container agent is not in the eks.amazonaws.com/skip-containers annotation")
        self.assertNotIn("container simulator is not in", out)

    def test_fail_index_codes_that_are_not_the_supervisors(self):
        for rule in self.job["spec"]["podFailurePolicy"]["rules"]:
            if rule["action"] == "FailIndex" and rule["onExitCodes"]["containerName"] == "agent":
                rule["onExitCodes"]["values"] = [40, 42]
        out = self.fails_with("container agent: podFailurePolicy FailIndex exit codes [40, 42] are not the supervisor's [41, 42]")
        self.assertNotIn("container simulator: podFailurePolicy", out)

    def test_fail_job_missing(self):
        rules = self.job["spec"]["podFailurePolicy"]["rules"]
        self.job["spec"]["podFailurePolicy"]["rules"] = [r for r in rules if r["action"] != "FailJob"]
        self.fails_with("container simulator: podFailurePolicy FailJob exit codes [] are not the supervisor's [2]")

    def test_the_uploader_is_not_a_native_sidecar(self):
        del container(self.job, "uploader")["restartPolicy"]
        self.fails_with("no `logcopy upload` native sidecar")

    def test_imds_reachable(self):
        policy = of(self.docs, "NetworkPolicy", "-worker-egress")
        for rule in policy["spec"]["egress"]:
            for peer in rule.get("to", []):
                del peer["ipBlock"]["except"]
        self.fails_with("NetworkPolicy leaderboard-submission-worker-egress: an egress rule reaches the instance "
                        "metadata service")
        self.setUp()
        of(self.docs, "NetworkPolicy", "-monitor-egress")["spec"]["egress"].append({})
        self.fails_with("NetworkPolicy leaderboard-submission-monitor-egress: an egress rule reaches")

    def test_imds_reachable_over_ipv6(self):
        policy = of(self.docs, "NetworkPolicy", "-worker-egress")
        policy["spec"]["egress"][1]["to"].append({"ipBlock": {"cidr": "fd00:ec2::/64"}})
        self.fails_with("NetworkPolicy leaderboard-submission-worker-egress: an egress rule reaches the instance "
                        "metadata service")
        policy["spec"]["egress"][1]["to"][-1]["ipBlock"]["except"] = ["fd00:ec2::254/128"]
        rc, out = check(self.docs)
        self.assertEqual(rc, 0, out)

    def test_no_network_policy_for_the_workers(self):
        self.docs.remove(of(self.docs, "NetworkPolicy", "-worker-egress"))
        self.fails_with("no NetworkPolicy in")


if __name__ == "__main__":
    unittest.main()
