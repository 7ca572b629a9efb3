"""Run the auditor's scripts (docs/auditor/) the way an auditor would.

Each run sees a PATH holding only bash, openssl and the coreutils the scripts use,
so a script that reached for python, xxd or jq fails here instead of on the
auditor's machine. Inputs are written byte for byte into a fresh directory that
is also the run's TMPDIR, so a test can check the scripts clean up after
themselves. Shared by the integration tests and the e2e test against the service.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "docs" / "auditor"
TOOLS = (
    "bash",
    "openssl",
    "base64",
    "cat",
    "cp",
    "csplit",
    "cut",
    "dirname",
    "head",
    "mktemp",
    "od",
    "rm",
    "sha256sum",
    "tail",
    "tr",
    "wc",
)
"""Everything the scripts and the guide's by-hand steps may run (besides bash builtins)."""

LEAF_FILE = "leaf.bin"
RECEIPT_FILE = "receipt.tlog-proof"
KEY_FILE = "log-key.pem"
OLD_FILE = "old.checkpoint"
NEW_FILE = "new.checkpoint"
PROOF_FILE = "consistency.proof"


def tool_dir(tmp_path: Path) -> Path:
    """A directory of links to the allowed tools only: the PATH of every run."""
    bin_dir = tmp_path / "auditor-bin"
    if not bin_dir.is_dir():
        bin_dir.mkdir()
        for tool in TOOLS:
            found = shutil.which(tool)
            if found is None:
                raise RuntimeError(f"{tool} is not installed; the auditor scripts need it")
            (bin_dir / tool).symlink_to(found)
    return bin_dir


def run_in(
    tmp_path: Path, files: dict[str, bytes], argv: list[str]
) -> subprocess.CompletedProcess[str]:
    """Write ``files`` into a fresh directory and run ``bash argv...`` there."""
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=tmp_path))
    for name, data in files.items():
        (run_dir / name).write_bytes(data)
    bin_dir = tool_dir(tmp_path)
    env = {"PATH": str(bin_dir), "TMPDIR": str(run_dir), "LANG": os.environ.get("LANG", "C")}
    return subprocess.run(
        [str(bin_dir / "bash"), *argv],
        cwd=run_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def run_verify_receipt(
    tmp_path: Path, leaf: bytes, receipt: str, pem: str, name: str, origin: str
) -> subprocess.CompletedProcess[str]:
    files = {LEAF_FILE: leaf, RECEIPT_FILE: receipt.encode(), KEY_FILE: pem.encode()}
    script = str(SCRIPTS / "verify-receipt.sh")
    return run_in(tmp_path, files, [script, LEAF_FILE, RECEIPT_FILE, KEY_FILE, name, origin])


def run_verify_consistency(
    tmp_path: Path,
    old_checkpoint: str,
    new_checkpoint: str,
    proof: str,
    pem: str,
    name: str,
    origin: str,
) -> subprocess.CompletedProcess[str]:
    files = {
        OLD_FILE: old_checkpoint.encode(),
        NEW_FILE: new_checkpoint.encode(),
        PROOF_FILE: proof.encode(),
        KEY_FILE: pem.encode(),
    }
    script = str(SCRIPTS / "verify-consistency.sh")
    argv = [script, OLD_FILE, NEW_FILE, PROOF_FILE, KEY_FILE, name, origin]
    return run_in(tmp_path, files, argv)


def accepted(result: subprocess.CompletedProcess[str]) -> str:
    """The ``OK ...`` line of a run that must have accepted; fails the test otherwise."""
    assert result.returncode == 0, f"rejected: {result.stderr!r}"
    assert result.stderr == "", result.stderr
    assert result.stdout.startswith("OK ") and result.stdout.count("\n") == 1, result.stdout
    return result.stdout[:-1]


def fail_reason(result: subprocess.CompletedProcess[str]) -> str:
    """The reason of a run that must have rejected: its one ``FAIL: <reason>`` line."""
    assert result.returncode == 1, f"exit {result.returncode}: {result.stdout!r}"
    assert result.stdout == "", result.stdout
    assert result.stderr.startswith("FAIL: ") and result.stderr.count("\n") == 1, result.stderr
    return result.stderr[len("FAIL: ") : -1]
