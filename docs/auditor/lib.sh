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

# Processes are what these scripts spend their time on (a fork and exec costs more
# than hashing a node), so the helpers below start as few as they can: bash builtins
# turn hex into bytes and read answers back from files.

file_hex() { # file_hex PATH [SKIP [COUNT]]: sets HEX to those bytes of PATH as hex
	local args=(-An -v -tx1)
	if (($# > 1)); then args+=(-j "$2"); fi
	if (($# > 2)); then args+=(-N "$3"); fi
	HEX=$(od "${args[@]}" -- "$1")
	HEX=${HEX//[$' \n']/}
}

hash_to_bytes() { # hash_to_bytes HEX: the 32 bytes of 64 hex digits, on stdout
	printf "\\x${1:0:2}\\x${1:2:2}\\x${1:4:2}\\x${1:6:2}\\x${1:8:2}\\x${1:10:2}\\x${1:12:2}\\x${1:14:2}\\x${1:16:2}\\x${1:18:2}\\x${1:20:2}\\x${1:22:2}\\x${1:24:2}\\x${1:26:2}\\x${1:28:2}\\x${1:30:2}\\x${1:32:2}\\x${1:34:2}\\x${1:36:2}\\x${1:38:2}\\x${1:40:2}\\x${1:42:2}\\x${1:44:2}\\x${1:46:2}\\x${1:48:2}\\x${1:50:2}\\x${1:52:2}\\x${1:54:2}\\x${1:56:2}\\x${1:58:2}\\x${1:60:2}\\x${1:62:2}"
}

sha256_file() { # sha256_file PATH: sets SUM to the hex SHA-256 of PATH
	sha256sum -- "$1" >"$WORK/sum"
	read -r SUM _ <"$WORK/sum"
}

b64_hash_to_hex() { # b64_hash_to_hex B64: sets HEX (only after matching HASH_RE)
	printf '%s' "$1" | base64 -d >"$WORK/b64"
	file_hex "$WORK/b64"
}

# b64_hashes_to_hex LINE...: sets HASHES to the hex of each (all matched HASH_RE first).
# One base64 and one od for the whole proof, not one per line.
b64_hashes_to_hex() {
	local i
	HASHES=()
	(($#)) || return 0
	printf '%s\n' "$@" | base64 -d >"$WORK/b64"
	file_hex "$WORK/b64"
	for ((i = 0; i < $#; i++)); do
		HASHES+=("${HEX:i*64:64}")
	done
}

node_hash() { # node_hash LEFT RIGHT: sets NODE = SHA-256(0x01 || left || right), hex
	{
		printf '\001'
		hash_to_bytes "$1"
		hash_to_bytes "$2"
	} >"$WORK/node"
	sha256_file "$WORK/node"
	# shellcheck disable=SC2034 # read by the script that sources this file
	NODE=$SUM
}

read_lines() { # read_lines PATH WHAT: sets LINES to the file's lines
	local path=$1 what=$2 size line total=0
	need_file "$path" "$what"
	cp -- "$path" "$WORK/text" # read once: a pipe or a changing file gives one answer
	size=$(wc -c <"$WORK/text")
	if ((size > MAX_TEXT_BYTES)); then
		fail "$what is larger than $MAX_TEXT_BYTES bytes"
	fi
	mapfile -t LINES <"$WORK/text"
	for line in "${LINES[@]}"; do
		if [[ $line == *[$'\001'-$'\011\013'-$'\037']* ]]; then
			fail "$what holds control characters other than newlines"
		fi
		total=$((total + ${#line} + 1)) # bytes (LC_ALL=C), with the line's newline
	done
	if ((total == size + 1)); then
		fail "$what does not end with a newline"
	fi
	if ((total != size)); then # a NUL byte, which a bash string cannot hold
		fail "$what holds control characters other than newlines"
	fi
}

load_key() { # load_key PEM NAME: sets KEY_FILE, KEY_NAME, KEY_ID (8 hex digits)
	local pem=$1 name=$2 der=$WORK/key.der
	need_file "$pem" "the public key file"
	if [[ ! $name =~ ^[^[:space:]+]{1,255}$ || $name == *"$DASH"* ]]; then
		fail "the key name is not 1-255 characters without spaces, '+' or '$DASH'"
	fi
	# PEM is base64 of the DER between its BEGIN and END lines: decoded here, without
	# an openssl process (each costs more than all the hashing of a receipt).
	local pem_lines line body="" state=before
	mapfile -t pem_lines <"$pem"
	for line in "${pem_lines[@]}"; do
		line=${line%$'\r'}
		case $state/$line in
		before/"-----BEGIN PUBLIC KEY-----") state=inside ;;
		inside/"-----END PUBLIC KEY-----") state=after ;;
		inside/*) body+=$line ;;
		esac
	done
	if [[ $state != after || ! $body =~ ^[A-Za-z0-9+/]+={0,2}$ ]] ||
		! printf '%s' "$body" | base64 -d >"$der" 2>/dev/null; then
		fail "the public key file is not a PEM public key"
	fi
	file_hex "$der"
	if [[ ${#HEX} -ne 88 || ${HEX:0:24} != "$ED25519_SPKI_PREFIX" ]]; then
		fail "the public key is not an Ed25519 key"
	fi
	KEY_FILE=$der # DER, as openssl pkeyutl -keyform DER reads it
	# key id = SHA-256(name || 0x0A || 0x01 || 32-byte public key)[:4] (c2sp.org/signed-note)
	{
		printf '%s\n\001' "$name"
		hash_to_bytes "${HEX:24:64}"
	} >"$WORK/key-id-input"
	sha256_file "$WORK/key-id-input"
	KEY_ID=${SUM:0:8}
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
		file_hex "$raw"
		if [[ ${HEX:0:8} == "$KEY_ID" ]]; then
			found=yes
			break
		fi
	done
	if [[ -z $found ]]; then
		fail "$what has no signature by $KEY_NAME (key id $KEY_ID)"
	fi
	# A line with our name and key id whose signature fails is a forgery, not noise.
	if ((${#HEX} != 136)); then
		fail "the signature of $KEY_NAME on $what does not verify"
	fi
	{
		hash_to_bytes "${HEX:8:64}"
		hash_to_bytes "${HEX:72:64}"
	} >"$WORK/signature.ed25519"
	printf '%s\n' "${NOTE[@]:0:blank}" >"$WORK/signed-body" # the signed message: body lines, each with its newline
	if ! openssl pkeyutl -verify -pubin -keyform DER -inkey "$KEY_FILE" -rawin \
		-in "$WORK/signed-body" -sigfile "$WORK/signature.ed25519" >/dev/null 2>&1; then
		fail "the signature of $KEY_NAME on $what does not verify"
	fi
	# shellcheck disable=SC2034 # read by the script that sources this file
	b64_hash_to_hex "${NOTE[2]}"
	# shellcheck disable=SC2034 # read by the script that sources this file
	CP_SIZE=${NOTE[1]} CP_ROOT_B64=${NOTE[2]} CP_ROOT=$HEX
}
