#!/usr/bin/env bash
# verify-consistency.sh OLD_CHECKPOINT NEW_CHECKPOINT PROOF PUBKEY_PEM KEY_NAME ORIGIN
#
# Checks that the log ORIGIN at NEW_CHECKPOINT is the log at OLD_CHECKPOINT with
# events appended, nothing changed or removed: both checkpoints are signed by the
# Ed25519 key in PUBKEY_PEM named KEY_NAME, the old size is at most the new one,
# and PROOF (one base64 hash per line, as served by
# GET /v1/ledger/consistency?from=OLD&to=NEW) verifies per RFC 9162 section 2.1.4.2.
# Prints one "OK ..." line and exits 0, or one "FAIL: <reason>" line on stderr
# and exits 1. Needs only bash, coreutils and openssl 3.0 or later.

# shellcheck source=lib.sh
HERE=${BASH_SOURCE[0]%/*} # the directory of this script, without a dirname process
if [[ $HERE == "${BASH_SOURCE[0]}" ]]; then HERE=.; fi
source "$HERE/lib.sh"

need_args 6 "verify-consistency.sh OLD_CHECKPOINT NEW_CHECKPOINT PROOF PUBKEY_PEM KEY_NAME ORIGIN" "$@"
OLD=$1 NEW=$2 PROOF_FILE=$3 PEM=$4 NAME=$5 ORIGIN=$6
load_key "$PEM" "$NAME"

# 1. Both checkpoints: right log, signed by the key we were given out of band.
read_lines "$OLD" "the old checkpoint"
NOTE=("${LINES[@]}")
check_checkpoint "the old checkpoint" "$ORIGIN"
OLD_SIZE=$CP_SIZE OLD_ROOT=$CP_ROOT OLD_ROOT_B64=$CP_ROOT_B64
read_lines "$NEW" "the new checkpoint"
NOTE=("${LINES[@]}")
check_checkpoint "the new checkpoint" "$ORIGIN"
NEW_SIZE=$CP_SIZE NEW_ROOT=$CP_ROOT NEW_ROOT_B64=$CP_ROOT_B64

# 2. The proof: one hash per line.
read_lines "$PROOF_FILE" "the consistency proof"
checked=0
for line in "${LINES[@]}"; do
	if [[ ! $line =~ $HASH_RE ]]; then
		fail "line $((checked + 1)) of the consistency proof is not a base64 SHA-256 hash"
	fi
	checked=$((checked + 1))
done
b64_hashes_to_hex "${LINES[@]}"
PATH_HASHES=("${HASHES[@]}")

# 3. RFC 9162 section 2.1.4.2, plus the empty cases of c2sp.org/tlog-witness
#    (old size 0, or both sizes equal: then the roots must be equal).
if ((OLD_SIZE > NEW_SIZE)); then
	fail "the old size $OLD_SIZE is above the new size $NEW_SIZE"
fi
if ((OLD_SIZE == 0 || OLD_SIZE == NEW_SIZE)); then
	if ((${#PATH_HASHES[@]} > 0)); then
		fail "a consistency proof from size 0 or to the same size must be empty"
	fi
	if ((OLD_SIZE == NEW_SIZE)) && [[ $OLD_ROOT != "$NEW_ROOT" ]]; then
		fail "two different roots for the same size: the log forked"
	fi
else
	if ((${#PATH_HASHES[@]} == 0)); then
		fail "the consistency proof is empty"
	fi
	if ((!(OLD_SIZE & (OLD_SIZE - 1)))); then
		# The old tree is a complete subtree of the new one: its root starts the path.
		PATH_HASHES=("$OLD_ROOT" "${PATH_HASHES[@]}")
	fi
	fn=$((OLD_SIZE - 1)) sn=$((NEW_SIZE - 1))
	while ((fn & 1)); do
		fn=$((fn >> 1)) sn=$((sn >> 1))
	done
	fr=${PATH_HASHES[0]} sr=${PATH_HASHES[0]}
	for c in "${PATH_HASHES[@]:1}"; do
		if ((sn == 0)); then
			fail "the consistency proof is too long"
		fi
		if ((fn & 1 || fn == sn)); then
			node_hash "$c" "$fr"
			fr=$NODE
			node_hash "$c" "$sr"
			sr=$NODE
			while ((!(fn & 1) && fn != 0)); do
				fn=$((fn >> 1)) sn=$((sn >> 1))
			done
		else
			node_hash "$sr" "$c"
			sr=$NODE
		fi
		fn=$((fn >> 1)) sn=$((sn >> 1))
	done
	if ((sn != 0)); then
		fail "the consistency proof is too short"
	fi
	if [[ $fr != "$OLD_ROOT" ]]; then
		fail "the consistency proof does not lead to the old root"
	fi
	if [[ $sr != "$NEW_ROOT" ]]; then
		fail "the consistency proof does not lead to the new root"
	fi
fi

printf 'OK %s grew from size %s (root %s) to size %s (root %s) by appending only; both signed by %s (key id %s)\n' \
	"$ORIGIN" "$OLD_SIZE" "$OLD_ROOT_B64" "$NEW_SIZE" "$NEW_ROOT_B64" "$KEY_NAME" "$KEY_ID"
