"""Evidence bundles: a real tenant's log exported, verified offline, and tampered copies caught.

The tenant has three checkpoints signed by the notary (sizes 6, 17 and 37; the first
event after 5 is the key's activation), cosigned by two of three witnesses, a data
subject whose personal field was shredded after signing, and three events no
checkpoint covers. Each tamper edits a copy of the bundle and, unless the manifest is
what is tested, fixes the manifest up as an attacker would: it is not signed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID, uuid4

import asyncpg
import pytest

from infra.eventstore import Actor, EventStore, NewEvent
from infra.evidence import (
    EvidenceError,
    FailureKind,
    KeySource,
    checkpoint_name,
    export_evidence,
    proof_name,
    verify_bundle,
)
from infra.merkle import Range, chain_hash, leaf_hash
from infra.notary import Cosigner, Notary, Prove
from infra.notes import (
    COSIGNATURE_KEY_TYPE,
    Checkpoint,
    Note,
    Signature,
    Signer,
    Verifier,
    b64,
    cosign,
    parse_note,
    sign_note,
)
from tests.conftest import LOG_HOST, Database

ACTOR = Actor("system", "evidence-test")
SUBJECT = "member-ada"
SIZES = (6, 17, 37)
LAST = 40
STRONGROOM = str(Path(sys.executable).parent / "strongroom")


def witness(signer: Signer) -> Cosigner:
    """A witness that cosigns whatever it is shown (the bundle checks the signatures only)."""

    async def cosign_now(note: Note, _old_size: int, _prove: Prove) -> list[Signature]:
        return [cosign(note.body, signer, int(time.time()))]

    return cosign_now


@dataclass(frozen=True)
class SignedLog:
    tenant: UUID
    log_key: Signer
    witnesses: tuple[Signer, ...]
    """Three witness keys; only the first two ever cosign."""
    bundle: Path
    """The whole log, exported once; tests copy it before touching it."""

    @property
    def origin(self) -> str:
        return f"{LOG_HOST}/t/{self.tenant}"

    def witness_keys(self) -> list[Verifier]:
        return [w.verifier for w in self.witnesses]


async def grow(store: EventStore, tenant: UUID, count: int, *, personal: bool = False) -> None:
    for i in range(count):
        stream = SUBJECT if personal else f"thing-{i % 3}"
        await store.append(
            tenant,
            [
                NewEvent(
                    stream=stream,
                    type="thing.noted",
                    data={"n": i},
                    personal={"email": "ada@example.com"} if personal else {},
                    subject=SUBJECT if personal else None,
                )
            ],
            expected={stream: None},
            command_id=uuid4(),
            actor=ACTOR,
        )


@pytest.fixture(scope="module")
async def signed_log(
    pool: asyncpg.Pool, store: EventStore, tmp_path_factory: pytest.TempPathFactory
) -> SignedLog:
    tenant = uuid4()
    log_key = Signer.generate(LOG_HOST)
    witnesses = tuple(
        Signer.generate(f"witness{i}.test", COSIGNATURE_KEY_TYPE) for i in range(1, 4)
    )
    notary = Notary(pool, store, [log_key], witnesses=[witness(w) for w in witnesses[:2]])
    for count, size in zip((5, 11, 20), SIZES, strict=True):
        await grow(store, tenant, count, personal=size == 37)
        assert (await notary.sign_tenant(tenant)).size == size
    await grow(store, tenant, 3)
    assert await store.shred_subject(tenant, SUBJECT) == 20
    bundle = tmp_path_factory.mktemp("evidence") / "bundle"
    report = await export_evidence(pool, tenant, bundle, witnesses=[w.verifier for w in witnesses])
    assert (report.events, report.checkpoints, report.uncovered) == (LAST, 3, 3)
    return SignedLog(tenant, log_key, witnesses, bundle)


@pytest.fixture
def copy(signed_log: SignedLog, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(signed_log.bundle, target)
    for path in target.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target


def reseal(bundle: Path) -> None:
    """What anyone can do: make the manifest's hashes match the files again."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"] = {
        name: hashlib.sha256((bundle / name).read_bytes()).hexdigest() for name in manifest["files"]
    }
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def edit_lines(path: Path, edit: Callable[[list[bytes]], object]) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    edit(lines)
    path.write_bytes(b"".join(lines))


# ---- the bundle as exported -----------------------------------------------------------


def test_an_exported_log_verifies_offline_with_the_keys_given(signed_log: SignedLog) -> None:
    report = verify_bundle(
        signed_log.bundle,
        log_keys=[signed_log.log_key.verifier],
        witnesses=signed_log.witness_keys(),
        witness_threshold=2,
    )
    assert report.ok, report.failure
    assert (report.first, report.last, report.events) == (1, LAST, LAST)
    assert (report.checkpoints, report.consistency_proofs) == (3, 2)
    assert (report.covered_to, report.uncovered) == (37, 3)
    assert report.log_keys == report.witnesses == KeySource.GIVEN
    assert report.cosignatures == {"witness1.test": 3, "witness2.test": 3}
    assert report.origin == signed_log.origin and report.tenant == str(signed_log.tenant)
    assert verify_bundle(signed_log.bundle, full=True).ok


def test_without_keys_the_bundles_own_are_used_and_the_report_says_so(
    signed_log: SignedLog,
) -> None:
    report = verify_bundle(signed_log.bundle)
    assert report.ok, report.failure
    assert report.log_keys == KeySource.BUNDLE and report.log_key_names == [LOG_HOST]
    assert report.witnesses == KeySource.BUNDLE
    assert report.witness_names == ["witness1.test", "witness2.test", "witness3.test"]


def test_the_bundle_holds_each_leaf_exactly_and_a_readme(
    signed_log: SignedLog, pool: asyncpg.Pool
) -> None:
    bundle = signed_log.bundle
    lines = (bundle / "leaves.jsonl").read_bytes().split(b"\n")
    assert len(lines) == LAST + 1 and lines[-1] == b""
    hashes = (bundle / "hashes.txt").read_text().splitlines()
    chain = bytes(32)
    for seq, (leaf, line) in enumerate(zip(lines, hashes, strict=False), 1):
        assert json.loads(leaf)["seq"] == seq
        chain = chain_hash(chain, leaf_hash(leaf))
        assert line == f"{leaf_hash(leaf).hex()} {chain.hex()}"
    shredded = [json.loads(leaf) for leaf in lines[17:37]]
    assert all(leaf["stream"] == SUBJECT and len(leaf["pii"]["email"]) == 64 for leaf in shredded)
    assert sorted(p.name for p in (bundle / "checkpoints").iterdir()) == [
        Path(checkpoint_name(size)).name for size in SIZES
    ]
    readme = (bundle / "README.md").read_text()
    assert signed_log.origin in readme and "--key" in readme
    assert signed_log.log_key.verifier.key_id.hex() in readme
    keys = json.loads((bundle / "keys/log-keys.json").read_text())["keys"]
    assert [k["vkey"] for k in keys] == [signed_log.log_key.verifier.vkey]
    assert (bundle / f"keys/{keys[0]['key_id']}.pem").read_text() == keys[0]["public_key_pem"]
    assert "PRIVATE" not in "".join(p.read_text() for p in bundle.rglob("*") if p.is_file())


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
async def test_the_readmes_shell_recipes_work_on_the_bundle(
    signed_log: SignedLog, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """The README's commands, as written, on a bundle that starts after seq 1."""
    bundle = tmp_path / "part"
    await export_evidence(pool, signed_log.tenant, bundle, first=5)
    readme = (bundle / "README.md").read_text()
    blocks = readme.split("```bash\n")[1:]
    leaf_recipe = blocks[0].split("```")[0]
    for seq in (5, 23):
        result = subprocess.run(
            ["bash", "-c", f"set -e; S={seq}\n{leaf_recipe}"],
            cwd=bundle,
            capture_output=True,
            text=True,
            check=True,
        )
        digest, recorded = result.stdout.splitlines()
        leaf = (bundle / "leaves.jsonl").read_bytes().split(b"\n")[seq - 5]
        assert digest.split()[0] == leaf_hash(leaf).hex() == recorded.split()[0]
    script = Path(__file__).parents[2] / "docs" / "auditor" / "verify-consistency.sh"
    pair = blocks[1].split("```")[0].replace("\\\n", " ").split()[1:]
    assert pair[:3] == ["checkpoints/OLD.checkpoint", "checkpoints/NEW.checkpoint",
                        "consistency/OLD-NEW.proof"]  # fmt: skip
    key = signed_log.log_key.verifier
    args = [
        checkpoint_name(17), checkpoint_name(37), proof_name(17, 37),
        f"keys/{key.key_id.hex()}.pem", key.name, signed_log.origin,
    ]  # fmt: skip
    result = subprocess.run(
        ["bash", str(script), *args], cwd=bundle, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and result.stdout.startswith("OK "), result.stderr


@pytest.mark.parametrize(
    ("first", "last", "checkpoints", "covered_to"),
    [(8, 37, 2, 37), (8, 30, 1, 17), (20, LAST, 1, 37), (38, LAST, 0, None)],
)
async def test_a_partial_range_verifies_from_its_prefix(
    signed_log: SignedLog,
    pool: asyncpg.Pool,
    tmp_path: Path,
    first: int,
    last: int,
    checkpoints: int,
    covered_to: int | None,
) -> None:
    bundle = tmp_path / "part"
    await export_evidence(pool, signed_log.tenant, bundle, first=first, last=last)
    report = verify_bundle(bundle, log_keys=[signed_log.log_key.verifier])
    assert report.ok, report.failure
    assert (report.events, report.checkpoints, report.covered_to) == (
        last - first + 1,
        checkpoints,
        covered_to,
    )
    prefix = json.loads((bundle / "prefix.json").read_text())
    assert prefix["size"] == first - 1
    nodes = Range(0, first - 1).complete_subtrees()
    assert [(e["level"], e["index"]) for e in prefix["frontier"]] == [
        (n.level, n.index) for n in nodes
    ]


async def test_a_forged_prefix_is_caught_by_the_first_signed_root(
    signed_log: SignedLog, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    bundle = tmp_path / "part"
    await export_evidence(pool, signed_log.tenant, bundle, first=8)
    prefix = json.loads((bundle / "prefix.json").read_text())
    prefix["frontier"][0]["hash"] = "00" * 32
    (bundle / "prefix.json").write_text(json.dumps(prefix))
    reseal(bundle)
    failure = verify_bundle(bundle).failure
    assert failure is not None
    assert (failure.kind, failure.checkpoint) == (FailureKind.ROOT, 17), failure


async def test_a_tar_bundle_verifies_like_a_directory(
    signed_log: SignedLog, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    tar = tmp_path / "evidence.tar"
    await export_evidence(pool, signed_log.tenant, tar, first=3, last=20)
    assert [p.name for p in tmp_path.iterdir()] == ["evidence.tar"], "no staging left behind"
    report = verify_bundle(tar, log_keys=[signed_log.log_key.verifier])
    assert report.ok, report.failure
    assert (report.events, report.checkpoints, report.consistency_proofs) == (18, 2, 1)


async def test_an_export_never_overwrites_and_names_what_is_wrong(
    signed_log: SignedLog, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken.tar").write_bytes(b"")
    for out in (tmp_path / "taken", tmp_path / "taken.tar"):
        with pytest.raises(EvidenceError, match="exists; an export never overwrites"):
            await export_evidence(pool, signed_log.tenant, out)
    with pytest.raises(EvidenceError, match=f"the log has {LAST} events, not {LAST + 1}"):
        await export_evidence(pool, signed_log.tenant, tmp_path / "b", last=LAST + 1)
    with pytest.raises(EvidenceError, match="has no log here"):
        await export_evidence(pool, uuid4(), tmp_path / "c.tar")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken", "taken.tar"]


async def test_a_tenant_exports_only_its_own_log(
    signed_log: SignedLog, pool: asyncpg.Pool, store: EventStore, tmp_path: Path
) -> None:
    other = uuid4()
    await grow(store, other, 4)
    await export_evidence(pool, other, tmp_path / "other")
    text = b"".join(p.read_bytes() for p in (tmp_path / "other").rglob("*") if p.is_file())
    assert str(signed_log.tenant).encode() not in text
    report = verify_bundle(tmp_path / "other")
    assert report.ok and report.events == 4 and report.covered_to is None


async def test_a_store_that_lost_an_event_exports_as_it_is_and_fails_there(
    pool: asyncpg.Pool, store: EventStore, superuser: asyncpg.Connection, tmp_path: Path
) -> None:
    tenant = uuid4()
    await grow(store, tenant, 12)
    async with superuser.transaction():
        await superuser.execute("SET LOCAL session_replication_role = replica")
        await superuser.execute("DELETE FROM event_log WHERE tenant_id = $1 AND seq = 7", tenant)
    report = await export_evidence(pool, tenant, tmp_path / "b")
    assert (report.first, report.last, report.events) == (1, 12, 11)
    failure = verify_bundle(tmp_path / "b").failure
    assert failure is not None and (failure.kind, failure.seq) == (FailureKind.LEAF, 7), failure


# ---- tampered copies: the first failure, exactly -----------------------------------------


def flip_a_leaf_byte(bundle: Path, log: SignedLog) -> None:
    def edit(lines: list[bytes]) -> None:
        lines[6] = lines[6].replace(b'"n":', b'"N":')

    edit_lines(bundle / "leaves.jsonl", edit)


def remove_a_leaf_line(bundle: Path, log: SignedLog) -> None:
    edit_lines(bundle / "leaves.jsonl", lambda lines: lines.pop(8))


def swap_two_leaves(bundle: Path, log: SignedLog) -> None:
    def edit(lines: list[bytes]) -> None:
        lines[3], lines[4] = lines[4], lines[3]

    edit_lines(bundle / "leaves.jsonl", edit)


def change_a_chain_hash(bundle: Path, log: SignedLog) -> None:
    def edit(lines: list[bytes]) -> None:
        lines[9] = lines[9][:65] + b"0" * 64 + b"\n"

    edit_lines(bundle / "hashes.txt", edit)


def rewrite_a_leaf_and_its_hashes(bundle: Path, log: SignedLog) -> None:
    """A careful forger: seq 12 changed, every later recorded hash recomputed."""
    leaves = (bundle / "leaves.jsonl").read_bytes().split(b"\n")[:-1]
    leaves[11] = leaves[11].replace(b'"n":', b'"N":')
    lines, chain = [], bytes(32)
    for leaf in leaves:
        chain = chain_hash(chain, leaf_hash(leaf))
        lines.append(f"{leaf_hash(leaf).hex()} {chain.hex()}\n")
    (bundle / "leaves.jsonl").write_bytes(b"".join(leaf + b"\n" for leaf in leaves))
    (bundle / "hashes.txt").write_text("".join(lines))


def flip_a_signature_byte(bundle: Path, log: SignedLog) -> None:
    path = bundle / checkpoint_name(17)
    text = path.read_text()
    start = text.index(f"\u2014 {LOG_HOST} ") + len(LOG_HOST) + 3
    at = start + 60
    path.write_text(text[:at] + ("A" if text[at] != "A" else "B") + text[at + 1 :])


def sign_another_root(bundle: Path, log: SignedLog) -> None:
    """The log key itself signs a root the leaves do not give (a forked log)."""
    body = Checkpoint(log.origin, 17, bytes(32)).body()
    (bundle / checkpoint_name(17)).write_text(Note(body, (sign_note(body, log.log_key),)).text())


def change_a_proof_line(bundle: Path, log: SignedLog) -> None:
    edit_lines(
        bundle / proof_name(6, 17),
        lambda lines: lines.__setitem__(0, b64(bytes(32)).encode() + b"\n"),
    )


def add_a_line(bundle: Path, log: SignedLog) -> None:
    edit_lines(bundle / "leaves.jsonl", lambda lines: lines.append(lines[-1]))


def cut_the_last_line(bundle: Path, log: SignedLog) -> None:
    edit_lines(bundle / "leaves.jsonl", lambda lines: lines.pop())


def forge_a_witness_cosignature(bundle: Path, log: SignedLog) -> None:
    path = bundle / checkpoint_name(37)
    note = parse_note(path.read_text())
    forged = cosign("another body\n", log.witnesses[0], 1)
    kept = tuple(s for s in note.signatures if s.name != "witness1.test")
    path.write_text(Note(note.body, (*kept, forged)).text())


Tamper = Callable[[Path, SignedLog], None]


@pytest.mark.parametrize(
    ("tamper", "kind", "seq", "checkpoint", "reason"),
    [
        pytest.param(flip_a_leaf_byte, "leaf", 7, None, "recorded leaf hash", id="a leaf byte"),
        pytest.param(remove_a_leaf_line, "leaf", 9, None, "another seq", id="a removed line"),
        pytest.param(swap_two_leaves, "leaf", 4, None, "another seq", id="a reordered pair"),
        pytest.param(change_a_chain_hash, "chain", 10, None, "chain hash", id="a chain hash"),
        pytest.param(
            rewrite_a_leaf_and_its_hashes, "root", None, 17, "signed", id="a rehashed rewrite"
        ),
        pytest.param(
            flip_a_signature_byte, "signature", None, 17, "does not verify", id="a signature byte"
        ),
        pytest.param(sign_another_root, "root", None, 17, "the leaves give", id="a signed root"),
        pytest.param(change_a_proof_line, "consistency", None, 17, "from 6 to 17", id="a proof"),
        pytest.param(add_a_line, "count", 41, None, "more than 40", id="an extra line"),
        pytest.param(cut_the_last_line, "count", 40, None, "ends at seq 39", id="a cut tail"),
        pytest.param(
            forge_a_witness_cosignature, "witness", None, 37, "witness1", id="a forged cosignature"
        ),
    ],
)
def test_a_tampered_copy_fails_at_its_first_failure(
    signed_log: SignedLog,
    copy: Path,
    tamper: Tamper,
    kind: str,
    seq: int | None,
    checkpoint: int | None,
    reason: str,
) -> None:
    tamper(copy, signed_log)
    reseal(copy)
    report = verify_bundle(copy)
    assert not report.ok
    failure = report.failure
    assert failure is not None
    assert (failure.kind, failure.seq, failure.checkpoint) == (kind, seq, checkpoint), failure
    assert reason in failure.reason, failure.reason


@pytest.mark.parametrize(
    ("tampers", "kind", "seq"),
    [
        ((flip_a_leaf_byte, swap_two_leaves), "leaf", 4),
        ((flip_a_leaf_byte, change_a_chain_hash), "leaf", 7),
        ((change_a_chain_hash, remove_a_leaf_line), "leaf", 9),
        ((rewrite_a_leaf_and_its_hashes, change_a_chain_hash), "chain", 10),
    ],
    ids=["seq before a hash", "hash before chain", "seq before chain", "chain before root"],
)
def test_of_two_tampers_the_earlier_seq_is_reported(
    signed_log: SignedLog, copy: Path, tampers: tuple[Tamper, Tamper], kind: str, seq: int
) -> None:
    for tamper in tampers:
        tamper(copy, signed_log)
    reseal(copy)
    failure = verify_bundle(copy).failure
    assert failure is not None and (failure.kind, failure.seq) == (kind, seq), failure


def test_a_changed_file_fails_on_the_manifest_first(signed_log: SignedLog, copy: Path) -> None:
    flip_a_leaf_byte(copy, signed_log)
    flip_a_signature_byte(copy, signed_log)
    failure = verify_bundle(copy).failure
    assert failure is not None
    assert (failure.kind, failure.file) == (FailureKind.MANIFEST, checkpoint_name(17)), failure
    reseal(copy)
    (copy / "keys" / "extra.txt").write_text("x")
    failure = verify_bundle(copy).failure
    assert failure is not None and (failure.kind, failure.file) == ("manifest", "keys/extra.txt")
    (copy / "keys" / "extra.txt").unlink()
    (copy / "hashes.txt").unlink()
    failure = verify_bundle(copy).failure
    assert failure is not None and (failure.kind, failure.file) == ("manifest", "hashes.txt")


def test_a_leaf_that_is_not_canonical_fails_the_full_check_first(
    signed_log: SignedLog, copy: Path
) -> None:
    def edit(lines: list[bytes]) -> None:
        lines[2] = lines[2].replace(b'"n":', b'"n": ', 1)

    edit_lines(copy / "leaves.jsonl", edit)
    reseal(copy)
    fast = verify_bundle(copy).failure
    assert fast is not None and (fast.kind, fast.seq) == ("leaf", 3)
    assert "recorded leaf hash" in fast.reason
    full = verify_bundle(copy, full=True).failure
    assert full is not None and (full.kind, full.seq) == ("leaf", 3)
    assert full.reason == "leaf is not in canonical form"


def test_a_key_the_auditor_does_not_trust_fails_the_first_checkpoint(
    signed_log: SignedLog,
) -> None:
    other = Signer.generate(LOG_HOST)
    failure = verify_bundle(signed_log.bundle, log_keys=[other.verifier]).failure
    assert failure is not None
    assert (failure.kind, failure.checkpoint) == (FailureKind.SIGNATURE, 6)
    assert failure.reason == "no signature by any of the trusted log keys"


def test_a_witness_threshold_counts_valid_cosignatures(signed_log: SignedLog) -> None:
    keys = signed_log.witness_keys()
    assert verify_bundle(signed_log.bundle, witnesses=keys[:1], witness_threshold=1).ok
    assert verify_bundle(signed_log.bundle, witnesses=keys, witness_threshold=2).ok
    assert verify_bundle(signed_log.bundle, witness_threshold=2).ok, "the bundle's witness keys"
    failure = verify_bundle(signed_log.bundle, witnesses=keys, witness_threshold=3).failure
    assert failure is not None
    assert (failure.kind, failure.checkpoint) == (FailureKind.WITNESS, 6)
    assert failure.reason == "2 valid cosignature(s) of the 3 required"
    failure = verify_bundle(signed_log.bundle, witnesses=keys[2:], witness_threshold=1).failure
    assert failure is not None and failure.reason == "0 valid cosignature(s) of the 1 required"
    with pytest.raises(EvidenceError, match="needs as many witness keys"):
        verify_bundle(signed_log.bundle, witnesses=keys[:1], witness_threshold=2)


# ---- the command line ------------------------------------------------------------------


def run(*args: str, database: Database | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}
    if database is not None:
        env["STRONGROOM_DATABASE_URL"] = database.app_url
        env["STRONGROOM_OWNER_DATABASE_URL"] = database.owner_url
        env["STRONGROOM_CLI_DATABASE_URL"] = database.cli_url
    return subprocess.run(
        [STRONGROOM, *args], capture_output=True, text=True, timeout=120, env=env, check=False
    )


def test_the_cli_exports_and_verifies_a_bundle(
    signed_log: SignedLog, database: Database, tmp_path: Path
) -> None:
    out = tmp_path / "cli.tar"
    exported = run(
        "export", "evidence", str(out), "--tenant", str(signed_log.tenant), "--from", "2",
        "--json", database=database,
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    summary = json.loads(exported.stdout)
    assert summary["from"] == 2 and summary["to"] >= LAST and summary["checkpoints"] == 3
    vkey = signed_log.log_key.verifier.vkey

    checked = run("verify", str(out), "--key", vkey, "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    report = json.loads(checked.stdout)
    assert report["ok"] is True and report["failure"] is None
    assert report["events"] == summary["to"] - 1 and report["checkpoints"] == 3
    assert report["keys"]["log"] == {"source": "given", "names": [LOG_HOST]}
    assert report["events_per_s"] > 0 and report["root"]

    people = run(
        "export", "evidence", str(tmp_path / "dir"), "--tenant", str(signed_log.tenant),
        database=database,
    )  # fmt: skip
    assert people.returncode == 0, people.stderr
    assert "exported" in people.stdout and "the last of size 37" in people.stdout
    assert (tmp_path / "dir" / "manifest.json").is_file()

    table = run("verify", str(out), "--key", vkey)
    assert table.returncode == 0 and "intact" in table.stdout
    assert "FROM THE BUNDLE" not in table.stdout
    tofu = run("verify", str(out))
    assert tofu.returncode == 0 and "FROM THE BUNDLE" in tofu.stdout
    assert (
        "trust on first use" in json.loads(run("verify", str(out), "--json").stdout)["warnings"][0]
    )


def test_the_cli_names_the_first_failure_and_exits_1(signed_log: SignedLog, copy: Path) -> None:
    flip_a_leaf_byte(copy, signed_log)
    reseal(copy)
    result = run("verify", str(copy), "--json")
    assert result.returncode == 1
    failure = json.loads(result.stdout)["failure"]
    assert (failure["kind"], failure["seq"], failure["checkpoint"]) == ("leaf", 7, None)
    table = run("verify", str(copy))
    assert table.returncode == 1 and "FIRST FAILURE: leaf at seq 7" in table.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["verify"], "give a BUNDLE or --tenant ID (exactly one)"),
        (["verify", "BUNDLE", "--tenant", str(UUID(int=1))], "exactly one"),
        (["verify", "--tenant", str(UUID(int=1)), "--key", "x"], "--key: only for a BUNDLE"),
        (["verify", "BUNDLE", "--key", "not-a-key"], "--key: a verifier key is"),
        (["verify", "MISSING"], "no bundle at"),
        (
            ["verify", "BUNDLE", "--witness-threshold", "2", "--witness", "WITNESS"],
            "needs as many witness keys",
        ),
        (["export", "evidence", "BUNDLE", "--tenant", "TENANT"], "an export never overwrites"),
        (["export", "evidence", "x", "--tenant", "nope"], "--tenant: 'nope' is not a UUID"),
    ],
)
def test_the_cli_refuses_bad_input_in_one_line(
    signed_log: SignedLog, database: Database, tmp_path: Path, args: list[str], message: str
) -> None:
    replace = {
        "BUNDLE": str(signed_log.bundle),
        "MISSING": str(tmp_path / "missing"),
        "WITNESS": signed_log.witnesses[0].verifier.vkey,
        "TENANT": str(signed_log.tenant),
    }
    result = run(*(replace.get(a, a) for a in args), database=database)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
