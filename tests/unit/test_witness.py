"""The witness state machine (c2sp.org/tlog-witness add-checkpoint) over a real sqlite file.

Checkpoints come from ``SignedLog``: a log of made-up leaves whose roots and
consistency proofs are the textbook RFC 9162 ones from ``infra.merkle``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from infra.merkle import leaf_hash, reference_consistency, reference_root
from infra.notes import (
    COSIGNATURE_KEY_TYPE,
    NOTE_KEY_TYPE,
    Checkpoint,
    Note,
    Signer,
    Verifier,
    parse_note,
    sign_note,
    verified_cosigners,
)
from infra.witness import (
    MAX_PROOF_LINES,
    SIZE_CONTENT_TYPE,
    Reply,
    TrustedLog,
    Witness,
    WitnessState,
    parse_trusted_log,
    parse_witnesses,
    submission_text,
    trusted_logs,
)

HOST = "test.strongroom.localhost"
ORIGIN = f"{HOST}/t/7b0c1d8e-0f8a-4a55-9f53-4b8f3f2f0a11"
OTHER_ORIGIN = f"{HOST}/t/0d9f0b65-4b6e-4c8b-8f3e-6d1a2b3c4d5e"
NOW = 1_790_000_000


class SignedLog:
    """A tenant log as a witness sees it: signed checkpoints and consistency proofs."""

    def __init__(self, origin: str, signer: Signer, tag: str = "") -> None:
        self.origin = origin
        self.signer = signer
        self.leaves = [leaf_hash(f"{origin} {tag} event {i}".encode()) for i in range(300)]

    def checkpoint(self, size: int) -> Note:
        body = Checkpoint(self.origin, size, reference_root(self.leaves[:size])).body()
        return Note(body, (sign_note(body, self.signer),))

    def proof(self, old: int, new: int) -> list[bytes]:
        return reference_consistency(old, self.leaves[:new])

    def submission(self, old: int, new: int) -> bytes:
        return submission_text(old, self.proof(old, new), self.checkpoint(new)).encode()


@pytest.fixture
def log_key() -> Signer:
    return Signer.generate(HOST, NOTE_KEY_TYPE)


@pytest.fixture
def witness_key() -> Signer:
    return Signer.generate("witness.test/w1", COSIGNATURE_KEY_TYPE)


@pytest.fixture
def state(tmp_path: Path) -> WitnessState:
    return WitnessState.open(tmp_path / "witness.sqlite")


@pytest.fixture
def tenant_log(log_key: Signer) -> SignedLog:
    return SignedLog(ORIGIN, log_key)


@pytest.fixture
def witness(witness_key: Signer, log_key: Signer, state: WitnessState) -> Witness:
    return Witness([witness_key], trusted_logs([(ORIGIN, log_key.verifier)]), state, clock=clock())


def clock(start: int = NOW, step: int = 1) -> Callable[[], float]:
    ticks = iter(range(start, start + 10_000 * step, step))
    return lambda: float(next(ticks))


def cosigned_by(reply: Reply, note: Note, key: Signer) -> dict[str, int]:
    """Cosigner name -> time, from the 200 reply's lines appended to the checkpoint."""
    assert reply.status == 200, reply
    cosigned = parse_note(note.text() + reply.body.decode())
    return verified_cosigners(cosigned, [key.verifier])


def problem_of(reply: Reply) -> dict[str, object]:
    assert reply.content_type == "application/problem+json"
    body: dict[str, object] = json.loads(reply.body)
    assert body["status"] == reply.status
    return body


# --- Accepting ---------------------------------------------------------------------------


async def test_cosigns_the_first_checkpoint_of_a_log_and_remembers_it(
    witness: Witness, tenant_log: SignedLog, witness_key: Signer, state: WitnessState
) -> None:
    reply = await witness.add_checkpoint(tenant_log.submission(0, 5))

    assert reply.content_type.startswith("text/plain")
    assert cosigned_by(reply, tenant_log.checkpoint(5), witness_key) == {"witness.test/w1": NOW}
    head = WitnessState(state.path).head(ORIGIN)
    assert head is not None
    assert (head.size, head.root) == (5, reference_root(tenant_log.leaves[:5]))
    assert head.note == tenant_log.checkpoint(5).text()


async def test_cosigns_consistent_growth_with_real_proofs(
    witness: Witness, tenant_log: SignedLog, witness_key: Signer
) -> None:
    sizes = [1, 2, 3, 4, 7, 8, 9, 16, 17, 31, 32, 33, 100, 255, 256, 257]
    old = 0
    for size in sizes:
        reply = await witness.add_checkpoint(tenant_log.submission(old, size))
        assert cosigned_by(reply, tenant_log.checkpoint(size), witness_key), (old, size)
        old = size


async def test_cosigns_the_cosigned_checkpoint_again(
    witness: Witness, tenant_log: SignedLog, witness_key: Signer
) -> None:
    await witness.add_checkpoint(tenant_log.submission(0, 6))

    reply = await witness.add_checkpoint(tenant_log.submission(6, 6))

    assert cosigned_by(reply, tenant_log.checkpoint(6), witness_key)


async def test_answers_one_cosignature_per_witness_key(
    log_key: Signer, state: WitnessState, tenant_log: SignedLog
) -> None:
    keys = [Signer.generate(f"witness.test/w{i}", COSIGNATURE_KEY_TYPE) for i in (1, 2)]
    witness = Witness(keys, trusted_logs([(ORIGIN, log_key.verifier)]), state)

    reply = await witness.add_checkpoint(tenant_log.submission(0, 3))

    assert reply.body.decode().count("\u2014 ") == 2
    cosigned = parse_note(tenant_log.checkpoint(3).text() + reply.body.decode())
    assert set(verified_cosigners(cosigned, [k.verifier for k in keys])) == {
        "witness.test/w1",
        "witness.test/w2",
    }


async def test_ignores_signatures_from_unknown_keys(
    witness: Witness, tenant_log: SignedLog, witness_key: Signer
) -> None:
    note = tenant_log.checkpoint(4)
    stranger = Signer.generate("someone.else", NOTE_KEY_TYPE)
    same_name = Signer.generate(HOST, NOTE_KEY_TYPE)
    noisy = note.with_signatures([sign_note(note.body, stranger), sign_note(note.body, same_name)])

    reply = await witness.add_checkpoint(submission_text(0, [], noisy).encode())

    assert cosigned_by(reply, note, witness_key)


async def test_cosignature_times_never_go_back(
    log_key: Signer, witness_key: Signer, state: WitnessState, tenant_log: SignedLog
) -> None:
    backwards = clock(start=NOW, step=-100)
    witness = Witness([witness_key], trusted_logs([(ORIGIN, log_key.verifier)]), state, backwards)

    first = cosigned_by(
        await witness.add_checkpoint(tenant_log.submission(0, 2)),
        tenant_log.checkpoint(2),
        witness_key,
    )
    second = cosigned_by(
        await witness.add_checkpoint(tenant_log.submission(2, 3)),
        tenant_log.checkpoint(3),
        witness_key,
    )

    assert second["witness.test/w1"] >= first["witness.test/w1"] == NOW


# --- Refusing ----------------------------------------------------------------------------


def _malformed(tenant_log: SignedLog) -> dict[str, bytes]:
    good = tenant_log.submission(2, 5).decode()
    note = tenant_log.checkpoint(5).text()
    proof = tenant_log.proof(2, 5)
    lines = "".join(base64.b64encode(h).decode() + "\n" for h in proof)
    arabic_size = note.replace("\n5\n", "\n\u0665\n", 1)
    return {
        "not utf-8": b"old 0\n\n\xff\xfe",
        "no empty line": b"old 0\n",
        "no old line": ("\n" + note).encode(),
        "old with a leading zero": good.replace("old 2", "old 02").encode(),
        "old negative": good.replace("old 2", "old -2").encode(),
        "old not ascii": good.replace("old 2", "old \u0662").encode(),
        "old above 2^63": good.replace("old 2", f"old {2**63}").encode(),
        "proof line not base64": f"old 2\n{lines}not*base64\n\n{note}".encode(),
        "proof line too short": f"old 2\n{base64.b64encode(bytes(31)).decode()}\n\n{note}".encode(),
        "64 proof lines": ("old 2\n" + lines[: lines.index("\n") + 1] * 64 + "\n" + note).encode(),
        "no signature lines": f"old 0\n\n{tenant_log.checkpoint(5).body}\n".encode(),
        "checkpoint size not ascii": f"old 0\n\n{arabic_size}".encode(),
        "checkpoint not a checkpoint": b"old 0\n\nhello\n\n\xe2\x80\x94 x AAAAAAAA\n",
        "body too large": b"old 0\n\n" + b"x" * 100_000,
    }


@pytest.mark.parametrize(
    "case",
    [
        "not utf-8",
        "no empty line",
        "no old line",
        "old with a leading zero",
        "old negative",
        "old not ascii",
        "old above 2^63",
        "proof line not base64",
        "proof line too short",
        "64 proof lines",
        "no signature lines",
        "checkpoint size not ascii",
        "checkpoint not a checkpoint",
        "body too large",
    ],
)
async def test_refuses_a_malformed_body_with_400(
    case: str, witness: Witness, tenant_log: SignedLog, state: WitnessState
) -> None:
    await witness.add_checkpoint(tenant_log.submission(0, 2))

    reply = await witness.add_checkpoint(_malformed(tenant_log)[case])

    assert reply.status == 400
    problem_of(reply)
    head = state.head(ORIGIN)
    assert head is not None and head.size == 2


async def test_accepts_63_proof_lines_but_not_64(witness: Witness, tenant_log: SignedLog) -> None:
    """63 lines parse (and fail as a proof, 422); a 64th is a malformed body (400)."""
    await witness.add_checkpoint(tenant_log.submission(0, 2))
    note = tenant_log.checkpoint(5)
    hashes = tenant_log.proof(2, 5)[:1] * MAX_PROOF_LINES

    at_limit = await witness.add_checkpoint(submission_text(2, hashes, note).encode())
    over = await witness.add_checkpoint(submission_text(2, [*hashes, hashes[0]], note).encode())

    assert (at_limit.status, over.status) == (422, 400)


async def test_refuses_proof_lines_from_old_size_zero(
    witness: Witness, tenant_log: SignedLog, state: WitnessState
) -> None:
    body = submission_text(0, tenant_log.proof(2, 5), tenant_log.checkpoint(5)).encode()

    reply = await witness.add_checkpoint(body)

    assert reply.status == 400
    assert state.head(ORIGIN) is None
    assert [r.reason for r in state.refusals(ORIGIN)] == ["proof-from-zero"]


async def test_refuses_an_old_size_above_the_checkpoint_size(
    witness: Witness, tenant_log: SignedLog, state: WitnessState
) -> None:
    await witness.add_checkpoint(tenant_log.submission(0, 8))

    reply = await witness.add_checkpoint(submission_text(8, [], tenant_log.checkpoint(5)).encode())

    assert reply.status == 400
    head = state.head(ORIGIN)
    assert head is not None and head.size == 8


async def test_refuses_an_unknown_origin_with_404(
    witness: Witness, log_key: Signer, state: WitnessState
) -> None:
    other_tenant = SignedLog(OTHER_ORIGIN, log_key)

    reply = await witness.add_checkpoint(other_tenant.submission(0, 3))

    assert reply.status == 404
    problem_of(reply)
    assert state.head(OTHER_ORIGIN) is None
    assert state.refusals(OTHER_ORIGIN) == []


async def test_refuses_a_checkpoint_no_trusted_key_signed_with_403(
    witness: Witness, state: WitnessState
) -> None:
    impostor = SignedLog(ORIGIN, Signer.generate(HOST, NOTE_KEY_TYPE))

    reply = await witness.add_checkpoint(impostor.submission(0, 3))

    assert reply.status == 403
    problem_of(reply)
    assert state.head(ORIGIN) is None
    assert state.refusals(ORIGIN) == [], "an unsigned claim is not evidence"


async def test_refuses_a_forged_signature_from_the_trusted_key_with_403(
    witness: Witness, tenant_log: SignedLog, log_key: Signer
) -> None:
    real = tenant_log.checkpoint(3)
    other_body = tenant_log.checkpoint(4).body
    forged = Note(other_body, real.signatures)

    reply = await witness.add_checkpoint(submission_text(0, [], forged).encode())

    assert reply.status == 403


async def test_answers_a_stale_old_size_with_the_latest_cosigned_size(
    witness: Witness, tenant_log: SignedLog, state: WitnessState
) -> None:
    await witness.add_checkpoint(tenant_log.submission(0, 5))

    reply = await witness.add_checkpoint(tenant_log.submission(3, 9))

    assert reply == Reply(409, SIZE_CONTENT_TYPE, b"5\n")
    head = state.head(ORIGIN)
    assert head is not None and head.size == 5
    assert [r.reason for r in state.refusals(ORIGIN)] == ["old-size-mismatch"]


async def test_answers_a_log_it_never_cosigned_with_size_zero(
    witness: Witness, tenant_log: SignedLog
) -> None:
    reply = await witness.add_checkpoint(tenant_log.submission(4, 9))

    assert reply == Reply(409, SIZE_CONTENT_TYPE, b"0\n")


async def test_refuses_an_inconsistent_proof_with_422_and_records_it(
    witness: Witness, tenant_log: SignedLog, log_key: Signer, state: WitnessState
) -> None:
    await witness.add_checkpoint(tenant_log.submission(0, 5))
    rewritten = SignedLog(ORIGIN, log_key, tag="rewritten")

    reply = await witness.add_checkpoint(rewritten.submission(5, 12))

    assert reply.status == 422
    problem_of(reply)
    head = state.head(ORIGIN)
    assert head is not None and head.size == 5
    [record] = state.refusals(ORIGIN)
    assert (record.size, record.reason) == (12, "inconsistent")
    assert record.note == rewritten.checkpoint(12).text()


async def test_refuses_a_proof_that_lies_about_the_new_root(
    witness: Witness, tenant_log: SignedLog
) -> None:
    await witness.add_checkpoint(tenant_log.submission(0, 5))
    wrong_proof = tenant_log.proof(5, 11)

    reply = await witness.add_checkpoint(
        submission_text(5, wrong_proof, tenant_log.checkpoint(12)).encode()
    )

    assert reply.status == 422


async def test_refuses_and_records_a_fork_at_the_cosigned_size(
    witness: Witness, tenant_log: SignedLog, log_key: Signer, state: WitnessState
) -> None:
    await witness.add_checkpoint(tenant_log.submission(0, 7))
    fork = SignedLog(ORIGIN, log_key, tag="fork")

    reply = await witness.add_checkpoint(fork.submission(7, 7))

    assert reply.status == 409
    assert reply.content_type != SIZE_CONTENT_TYPE, "a fork is not a stale size: no retry"
    assert "fork" in str(problem_of(reply)["detail"])
    head = state.head(ORIGIN)
    assert head is not None and head.root == reference_root(tenant_log.leaves[:7])
    [record] = state.refusals(ORIGIN)
    assert (record.origin, record.size, record.reason) == (ORIGIN, 7, "fork")
    assert record.note == fork.checkpoint(7).text()


async def test_a_fork_sent_with_a_stale_old_size_is_still_recorded_as_a_fork(
    witness: Witness, tenant_log: SignedLog, log_key: Signer, state: WitnessState
) -> None:
    await witness.add_checkpoint(tenant_log.submission(0, 7))
    fork = SignedLog(ORIGIN, log_key, tag="fork")

    reply = await witness.add_checkpoint(fork.submission(0, 7))

    assert reply == Reply(409, SIZE_CONTENT_TYPE, b"7\n")
    assert [r.reason for r in state.refusals(ORIGIN)] == ["fork"]


# --- Which logs ----------------------------------------------------------------------------


async def test_each_origin_has_its_own_latest_checkpoint(
    log_key: Signer, witness_key: Signer, state: WitnessState
) -> None:
    a, b = SignedLog(ORIGIN, log_key), SignedLog(OTHER_ORIGIN, log_key)
    witness = Witness([witness_key], trusted_logs([(f"{HOST}/t/", log_key.verifier)]), state)

    await witness.add_checkpoint(a.submission(0, 9))
    reply_b = await witness.add_checkpoint(b.submission(0, 2))
    stale_b = await witness.add_checkpoint(b.submission(9, 12))

    assert reply_b.status == 200
    assert stale_b == Reply(409, SIZE_CONTENT_TYPE, b"2\n")
    heads = state.head(ORIGIN), state.head(OTHER_ORIGIN)
    assert [h.size if h else None for h in heads] == [9, 2]


async def test_an_origin_prefix_covers_the_logs_under_it_and_an_exact_origin_wins(
    log_key: Signer, witness_key: Signer, state: WitnessState
) -> None:
    tenant_key = Signer.generate("tenant.own.key", NOTE_KEY_TYPE)
    logs = trusted_logs([(f"{HOST}/t/", log_key.verifier), (ORIGIN, tenant_key.verifier)])
    witness = Witness([witness_key], logs, state)

    under_prefix = await witness.add_checkpoint(SignedLog(OTHER_ORIGIN, log_key).submission(0, 1))
    prefix_key_on_exact = await witness.add_checkpoint(SignedLog(ORIGIN, log_key).submission(0, 1))
    exact = await witness.add_checkpoint(SignedLog(ORIGIN, tenant_key).submission(0, 1))
    the_prefix_itself = await witness.add_checkpoint(
        SignedLog(f"{HOST}/t/", log_key).submission(0, 1)
    )
    beside = await witness.add_checkpoint(SignedLog(f"{HOST}/u/x", log_key).submission(0, 1))

    statuses = [under_prefix, prefix_key_on_exact, exact, the_prefix_itself, beside]
    assert [r.status for r in statuses] == [200, 403, 200, 404, 404]


async def test_a_log_may_have_two_keys_during_a_rotation(
    witness_key: Signer, state: WitnessState
) -> None:
    old, new = (Signer.generate(HOST, NOTE_KEY_TYPE) for _ in range(2))
    logs = trusted_logs([(ORIGIN, old.verifier), (ORIGIN, new.verifier)])
    witness = Witness([witness_key], logs, state)

    first = await witness.add_checkpoint(SignedLog(ORIGIN, old).submission(0, 3))
    second = await witness.add_checkpoint(SignedLog(ORIGIN, new).submission(3, 4))

    assert (first.status, second.status) == (200, 200)
    assert len(logs) == 1 and len(logs[0].verifiers) == 2


# --- Atomicity -----------------------------------------------------------------------------


async def test_two_concurrent_submissions_from_the_same_old_size_get_one_cosignature(
    witness: Witness, tenant_log: SignedLog, state: WitnessState
) -> None:
    await witness.add_checkpoint(tenant_log.submission(0, 4))

    replies = await asyncio.gather(
        witness.add_checkpoint(tenant_log.submission(4, 10)),
        witness.add_checkpoint(tenant_log.submission(4, 6)),
    )

    statuses = sorted(r.status for r in replies)
    assert statuses == [200, 409]
    winner = 10 if replies[0].status == 200 else 6
    head = state.head(ORIGIN)
    assert head is not None and head.size == winner


def slow_clock() -> float:
    """Holds the transaction open a little, so two writers surely overlap."""
    time.sleep(0.02)
    return float(NOW)


async def test_two_witness_processes_on_one_state_file_cannot_both_cosign(
    log_key: Signer, witness_key: Signer, state: WitnessState, tenant_log: SignedLog
) -> None:
    """No in-process lock is shared here: only the sqlite transaction keeps them apart."""
    logs = trusted_logs([(ORIGIN, log_key.verifier)])
    one, two = (Witness([witness_key], logs, WitnessState(state.path), slow_clock) for _ in "12")
    size = 0
    for _ in range(8):
        replies = await asyncio.gather(
            one.add_checkpoint(tenant_log.submission(size, size + 3)),
            two.add_checkpoint(tenant_log.submission(size, size + 5)),
        )
        assert sorted(r.status for r in replies) == [200, 409]
        size += 3 if replies[0].status == 200 else 5
        head = state.head(ORIGIN)
        assert head is not None and head.size == size


# --- Configuration -------------------------------------------------------------------------


def test_witness_keys_round_trip_through_their_text_forms() -> None:
    for _ in range(50):
        key = Signer.generate("witness.example.com/w1", COSIGNATURE_KEY_TYPE)
        assert Verifier.parse(key.verifier.vkey) == key.verifier
        assert Signer.parse(key.skey).verifier == key.verifier
        assert key.skey not in repr(key)


def test_a_witness_key_must_be_a_cosigner_key(log_key: Signer, state: WitnessState) -> None:
    with pytest.raises(ValueError, match="type 0x04"):
        Witness([log_key], [], state)


def test_parses_a_trusted_log_option(log_key: Signer, witness_key: Signer) -> None:
    assert parse_trusted_log(f"{ORIGIN}={log_key.verifier.vkey}") == (ORIGIN, log_key.verifier)
    assert TrustedLog(f"{HOST}/t/", ()).is_prefix
    for bad, message in [
        ("no-equals-sign", "ORIGIN=VKEY"),
        (f"={log_key.verifier.vkey}", "ORIGIN=VKEY"),
        (f"{ORIGIN}=not+a+key", "key of log"),
        (f"{ORIGIN}={witness_key.verifier.vkey}", "type 0x01"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_trusted_log(bad)


def test_parses_the_witnesses_setting(witness_key: Signer) -> None:
    other = Signer.generate("witness.test/w2", COSIGNATURE_KEY_TYPE).verifier
    text = f"{witness_key.verifier.vkey} https://w1.example/prefix/, {other.vkey} http://127.0.0.1:8710"

    endpoints = parse_witnesses(text)

    assert [(e.verifier, e.add_checkpoint_url) for e in endpoints] == [
        (witness_key.verifier, "https://w1.example/prefix/add-checkpoint"),
        (other, "http://127.0.0.1:8710/add-checkpoint"),
    ]
    assert parse_witnesses("") == parse_witnesses("  ") == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{w} https://a.example, ", "witness 2: expected '<vkey> <url>', got 0 words"),
        ("{w}", "witness 1: expected '<vkey> <url>', got 1 words"),
        ("{w} https://a.example extra", "got 3 words"),
        ("nope+00+AA https://a.example", "witness 1: .*verifier key"),
        ("{log} https://a.example", "not a cosigner key"),
        ("{w} ftp://user:hunter2@a.example", "witness 1: the URL is not http"),
        ("{w} https://a.example/?x=1", "query or fragment"),
        ("{w} https://a.example, {w} https://b.example", "witness 2: .*listed twice"),
    ],
)
def test_refuses_a_bad_witnesses_setting_with_a_clear_message(
    text: str, message: str, witness_key: Signer, log_key: Signer
) -> None:
    value = text.format(w=witness_key.verifier.vkey, log=log_key.verifier.vkey)

    with pytest.raises(ValueError, match=message) as raised:
        parse_witnesses(value)

    assert "hunter2" not in str(raised.value)
