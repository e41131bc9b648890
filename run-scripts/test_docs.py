"""docs/configuration.md against every program's --help, so the page cannot drift.

For each program section of the page (`## logcopy run`, `## supervisor`, `## make-job`, `## local-job`), the
flags that the programs' `--help` lists and the flags that the section's tables name must be the same sets:
a flag added to a program and not documented fails, and so does a documented flag that no program has.
Runs the built binaries (LOCAL_JOB_BIN_DIR, default target/debug: run-scripts/test builds them first).
"""

import os
import re
import subprocess
import sys
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(os.environ.get("LOCAL_JOB_BIN_DIR", Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug"))
DOC = ROOT / "docs" / "configuration.md"

# Each page section and the commands whose --help it documents.
SECTIONS = {
    "logcopy run": [
        [BIN / "logcopy", "run"],
        [BIN / "logcopy", "monitor"],
        [BIN / "logcopy", "restore"],
        [BIN / "logcopy", "merge"],
        [BIN / "logcopy", "evalai"],
        [BIN / "logcopy", "status"],
        [BIN / "logcopy", "upload"],
    ],
    "supervisor": [[BIN / "supervisor", "simulator"], [BIN / "supervisor", "agent"], [BIN / "supervisor", "gpu"]],
    "make-job": [[sys.executable, ROOT / "docker" / "k8s" / "make-job"]],
    "local-job": [[sys.executable, ROOT / "run-scripts" / "local-job"]],
}
# Flags every program has and no table lists.
COMMON = {"--help", "--version"}
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*(?![a-z0-9=-])")


def help_flags(cmd):
    """The long flags of the option lines (clap and argparse both start them with `-` after indentation), not the
    flags that descriptions mention."""
    out = subprocess.run([*map(str, cmd), "--help"], capture_output=True, text=True, timeout=60, check=True).stdout
    flags = set()
    for line in out.splitlines():
        spec = line.strip()
        if spec.startswith("-"):
            flags |= set(FLAG.findall(spec.split("  ")[0]))
    return flags - COMMON


def sections(text):
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def table_flags(body):
    """The flags named in the first column of the section's tables."""
    flags = set()
    for line in body.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            first = line.split("|")[1]
            flags |= set(FLAG.findall(first))
    return flags


class ConfigurationPage(unittest.TestCase):
    def test_every_flag_is_documented_and_every_documented_flag_exists(self):
        for exe in (BIN / "logcopy", BIN / "supervisor"):
            self.assertTrue(exe.exists(), f"{exe} is not built (run-scripts/test builds it first)")
        page = sections(DOC.read_text())
        for name, commands in SECTIONS.items():
            with self.subTest(section=name):
                self.assertIn(name, page, f"docs/configuration.md has no `## {name}` section")
                documented = table_flags(page[name])
                have = set().union(*(help_flags(c) for c in commands))
                self.assertEqual(
                    sorted(have - documented), [], f"{name}: flags in --help that the page's tables do not list"
                )
                self.assertEqual(
                    sorted(documented - have), [], f"{name}: flags in the page's tables that no --help lists"
                )


if __name__ == "__main__":
    unittest.main()
