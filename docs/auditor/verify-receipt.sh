#!/usr/bin/env bash
# verify-receipt.sh LEAF RECEIPT PUBKEY_PEM KEY_NAME ORIGIN
#
# Checks that the exact bytes of LEAF are the leaf at the receipt's index in the
# log ORIGIN, under a checkpoint that the Ed25519 key in PUBKEY_PEM, named
# KEY_NAME, signed. RECEIPT is c2sp.org/tlog-proof@v1 text as served by
# GET /v1/events/{seq}/receipt.tlog-proof; event seq s is leaf index s-1.
# Prints one "OK ..." line and exits 0, or one "FAIL: <reason>" line on stderr
# and exits 1. Needs only bash, coreutils and openssl 3.0 or later.

# shellcheck source=lib.sh
HERE=${BASH_SOURCE[0]%/*} # the directory of this script, without a dirname process
if [[ $HERE == "${BASH_SOURCE[0]}" ]]; then HERE=.; fi
source "$HERE/lib.sh"

need_args 5 "verify-receipt.sh LEAF RECEIPT PUBKEY_PEM KEY_NAME ORIGIN" "$@"
LEAF=$1 RECEIPT=$2 PEM=$3 NAME=$4 ORIGIN=$5
need_file "$LEAF" "the leaf"
load_key "$PEM" "$NAME"

# 1. The receipt: header, optional extra line, index, proof hashes, empty line, checkpoint.
read_lines "$RECEIPT" "the receipt"
R=("${LINES[@]}")
if [[ ${R[0]-} != "c2sp.org/tlog-proof@v1" ]]; then
	fail "the receipt does not start with c2sp.org/tlog-proof@v1"
fi
i=1
if [[ ${R[1]-} == "extra "* ]]; then
	i=2
fi
if [[ ! ${R[i]-} =~ ^index\ (.*)$ ]]; then
	fail "the receipt has no 'index' line"
fi
if [[ ! ${BASH_REMATCH[1]} =~ $DECIMAL_RE ]]; then
	fail "the receipt index is not a decimal of at most 18 digits without leading zeros"
fi
INDEX=${BASH_REMATCH[1]}
LINES_B64=()
for ((i = i + 1; i < ${#R[@]}; i++)); do
	if [[ -z ${R[i]} ]]; then
		break
	fi
	if [[ ! ${R[i]} =~ $HASH_RE ]]; then
		fail "proof line $((${#LINES_B64[@]} + 1)) of the receipt is not a base64 SHA-256 hash"
	fi
	LINES_B64+=("${R[i]}")
done
b64_hashes_to_hex "${LINES_B64[@]}"
PROOF=("${HASHES[@]}")
if ((i >= ${#R[@]})); then
	fail "the receipt has no empty line before its checkpoint"
fi

# 2. The checkpoint: right log, signed by the key we were given out of band.
NOTE=("${R[@]:i+1}")
check_checkpoint "the checkpoint" "$ORIGIN"
SIZE=$CP_SIZE ROOT=$CP_ROOT

# 3. The inclusion proof (RFC 9162 section 2.1.3.2) from SHA-256(0x00 || leaf) to the root.
{
	printf '\0'
	cat -- "$LEAF"
} >"$WORK/leaf-input"
sha256_file "$WORK/leaf-input"
LEAF_HASH=$SUM
if ((INDEX >= SIZE)); then
	fail "index $INDEX is not below the tree size $SIZE"
fi
fn=$INDEX sn=$((SIZE - 1)) r=$LEAF_HASH
for p in "${PROOF[@]}"; do
	if ((sn == 0)); then
		fail "the inclusion proof is too long"
	fi
	if ((fn & 1 || fn == sn)); then
		node_hash "$p" "$r"
		r=$NODE
		while ((!(fn & 1) && fn != 0)); do
			fn=$((fn >> 1)) sn=$((sn >> 1))
		done
	else
		node_hash "$r" "$p"
		r=$NODE
	fi
	fn=$((fn >> 1)) sn=$((sn >> 1))
done
if ((sn != 0)); then
	fail "the inclusion proof is too short"
fi
if [[ $r != "$ROOT" ]]; then
	fail "the inclusion proof does not lead to the root"
fi

printf 'OK leaf index %s (event seq %s) is in %s at tree size %s, root %s, signed by %s (key id %s)\n' \
	"$INDEX" "$((INDEX + 1))" "$ORIGIN" "$SIZE" "$CP_ROOT_B64" "$KEY_NAME" "$KEY_ID"
