"""Tests of docker/k8s/make-job's command line: the ids are required positive integers, every flag says what it is.

A manifest with a default or malformed id would start a Job whose logcopy exits 2 at once and, under restartPolicy
OnFailure, restarts until the Job's retries are spent (issue 19).
"""

import importlib.machinery
import importlib.util
import json
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
