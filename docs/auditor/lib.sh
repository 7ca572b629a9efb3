# shellcheck shell=bash
# Shared by verify-receipt.sh and verify-consistency.sh: sourced, never run.
#
# Only bash, coreutils and openssl. Hashes travel as lowercase hex in shell
# variables (never as raw bytes: a shell variable cannot hold a NUL byte) and
# become bytes again only on the way into sha256sum or a file for openssl.
# Every rejection ends in fail(): one "FAIL: <reason>" line on stderr, exit 1.
# fail() must not be called inside $(...), where its exit would end only the
# subshell; the parsing functions below therefore set globals instead.

set -euo pipefail
export LC_ALL=C # compare and count bytes, whatever the caller's locale

DASH=$'\xe2\x80\x94' # U+2014, which starts every signature line of a note
HASH_RE='^[A-Za-z0-9+/]{43}=$' # base64 of exactly 32 bytes
DECIMAL_RE='^(0|[1-9][0-9]{0,17})$' # no leading zeros; at most 18 digits fits bash arithmetic
ED25519_SPKI_PREFIX=302a300506032b6570032100 # DER of an Ed25519 SubjectPublicKeyInfo, before the key
MAX_TEXT_BYTES=65536

WORK=$(mktemp -d)
trap 'rm -rf -- "$WORK"' EXIT

fail() {
	printf 'FAIL: %s\n' "$*" >&2
	exit 1
}

need_args() { # need_args COUNT USAGE "$@"
	local count=$1 usage=$2
	shift 2
	if (($# != count)); then
		fail "usage: $usage"
	fi
}

need_file() { # need_file PATH WHAT; a path like /dev/fd/63 from <(...) is fine
	if [[ ! -r $1 || -d $1 ]]; then
		fail "cannot read $2 ($1)"
	fi
}

to_hex() { od -An -v -tx1 | tr -d ' \n'; }

hex_to_bytes() {
	local hex=$1 escaped="" i
	for ((i = 0; i < ${#hex}; i += 2)); do
		escaped+="\\x${hex:i:2}"
	done
	printf '%b' "$escaped"
}

b64_hash_to_hex() { printf '%s' "$1" | base64 -d | to_hex; } # only after matching HASH_RE

# b64_hashes_to_hex LINE...: sets HASHES to the hex of each (all matched HASH_RE first).
# One base64 and one od for the whole proof: a process per line would cost more than
# the hashing itself.
b64_hashes_to_hex() {
	local all i
	HASHES=()
	(($#)) || return 0
	all=$(printf '%s\n' "$@" | base64 -d | to_hex)
	for ((i = 0; i < $#; i++)); do
		HASHES+=("${all:i*64:64}")
	done
}

node_hash() { # node_hash LEFT RIGHT: sets NODE = SHA-256(0x01 || left || right), hex
	local out
	out=$(hex_to_bytes "01$1$2" | sha256sum)
	# shellcheck disable=SC2034 # read by the script that sources this file
	NODE=${out:0:64}
}

read_lines() { # read_lines PATH WHAT: sets LINES to the file's lines
	local path=$1 what=$2 size clean last
	need_file "$path" "$what"
	cp -- "$path" "$WORK/text" # read once: a pipe or a changing file gives one answer
	size=$(wc -c <"$WORK/text")
	if ((size > MAX_TEXT_BYTES)); then
		fail "$what is larger than $MAX_TEXT_BYTES bytes"
	fi
	clean=$(tr -d '\000-\011\013-\037' <"$WORK/text" | wc -c)
	if ((clean != size)); then
		fail "$what holds control characters other than newlines"
	fi
	if ((size > 0)); then
		last=$(tail -c 1 "$WORK/text" | to_hex)
		if [[ $last != 0a ]]; then
			fail "$what does not end with a newline"
		fi
	fi
	mapfile -t LINES <"$WORK/text"
}

load_key() { # load_key PEM NAME: sets KEY_FILE, KEY_NAME, KEY_ID (8 hex digits)
	local pem=$1 name=$2 der=$WORK/key.der
	need_file "$pem" "the public key file"
	if [[ ! $name =~ ^[^[:space:]+]{1,255}$ || $name == *"$DASH"* ]]; then
		fail "the key name is not 1-255 characters without spaces, '+' or '$DASH'"
	fi
	if ! openssl pkey -pubin -in "$pem" -outform DER -out "$der" 2>/dev/null; then
		fail "the public key file is not a PEM public key"
	fi
	if [[ $(wc -c <"$der") -ne 44 || $(head -c 12 "$der" | to_hex) != "$ED25519_SPKI_PREFIX" ]]; then
		fail "the public key is not an Ed25519 key"
	fi
	KEY_FILE=$WORK/key.pem
	openssl pkey -pubin -inform DER -in "$der" -out "$KEY_FILE"
	# key id = SHA-256(name || 0x0A || 0x01 || 32-byte public key)[:4] (c2sp.org/signed-note)
	local out
	out=$({ printf '%s\n\001' "$name"; tail -c 32 "$der"; } | sha256sum)
	KEY_ID=${out:0:8}
	KEY_NAME=$name
}

check_checkpoint() { # check_checkpoint WHAT ORIGIN: NOTE holds the note's lines
	# Sets CP_SIZE, CP_ROOT (hex) and CP_ROOT_B64 once the note is a checkpoint of
	# ORIGIN whose body KEY_NAME signed. Signature lines of other keys (witness
	# cosignatures, a rotated key) are skipped, as c2sp.org/signed-note says.
	local what=$1 origin=$2 count=${#NOTE[@]} blank=-1 i line
	for ((i = 0; i < count; i++)); do
		if [[ -z ${NOTE[i]} ]]; then
			blank=$i
			break
		fi
	done
	if ((blank < 3)); then
		fail "$what does not start with origin, size and root lines"
	fi
	if ((blank == count - 1)); then
		fail "$what has no signature lines"
	fi
	if [[ ${NOTE[0]} != "$origin" ]]; then
		fail "$what is for the log '${NOTE[0]}', not '$origin'"
	fi
	if [[ ! ${NOTE[1]} =~ $DECIMAL_RE ]]; then
		fail "the size of $what is not a decimal of at most 18 digits without leading zeros"
	fi
	if [[ ! ${NOTE[2]} =~ $HASH_RE ]]; then
		fail "the root of $what is not a base64 SHA-256 hash"
	fi
	local sig_re="^$DASH ([^ ]+) ([A-Za-z0-9+/]+={0,2})\$" raw=$WORK/signature found=""
	for line in "${NOTE[@]:blank+1}"; do
		if [[ ! $line =~ $sig_re ]]; then
			fail "$what has a malformed signature line"
		fi
		if [[ ${BASH_REMATCH[1]} != "$KEY_NAME" ]]; then
			continue
		fi
		if ! printf '%s' "${BASH_REMATCH[2]}" | base64 -d >"$raw" 2>/dev/null; then
			fail "$what has a malformed signature line"
		fi
		if [[ $(head -c 4 "$raw" | to_hex) == "$KEY_ID" ]]; then
			found=yes
			break
		fi
	done
	if [[ -z $found ]]; then
		fail "$what has no signature by $KEY_NAME (key id $KEY_ID)"
	fi
	# A line with our name and key id whose signature fails is a forgery, not noise.
	if [[ $(wc -c <"$raw") -ne 68 ]]; then
		fail "the signature of $KEY_NAME on $what does not verify"
	fi
	tail -c 64 "$raw" >"$WORK/signature.ed25519"
	printf '%s\n' "${NOTE[@]:0:blank}" >"$WORK/signed-body" # the signed message: body lines, each with its newline
	if ! openssl pkeyutl -verify -pubin -inkey "$KEY_FILE" -rawin \
		-in "$WORK/signed-body" -sigfile "$WORK/signature.ed25519" >/dev/null 2>&1; then
		fail "the signature of $KEY_NAME on $what does not verify"
	fi
	# shellcheck disable=SC2034 # read by the script that sources this file
	CP_SIZE=${NOTE[1]} CP_ROOT_B64=${NOTE[2]} CP_ROOT=$(b64_hash_to_hex "${NOTE[2]}")
}
