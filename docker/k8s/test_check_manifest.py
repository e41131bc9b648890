"""Tests of docker/k8s/check-manifest: it passes our manifest and finds each mistake it is there to find.

Needs PyYAML (.venv) and the binaries in CHECK_BIN_DIR (default target/debug), whose --help it reads.
"""

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


def check(doc):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(doc, f)
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


if __name__ == "__main__":
    unittest.main()
