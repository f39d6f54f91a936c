#!/usr/bin/env bash
# Imports fresh external key material into an EXTERNAL CMK: the seed's "Import key material by using
# Alibaba Cloud CLI" with `aliyun kms` replaced by kmsctl and its OpenSSL steps run as written.
#
#   scripts/import-key-material.sh KEY_ID [ALGORITHM] [--keep-material DIR]
#                                  [--key-spec RSA_2048|RSA_3072|RSA_4096] [--expire-unix SECONDS]
#
#   ALGORITHM   RSAES_OAEP_SHA_1 (default, as in the seed), RSAES_OAEP_SHA_256, RSAES_PKCS1_V1_5,
#               RSA_AES_KEY_WRAP_SHA_1 or RSA_AES_KEY_WRAP_SHA_256
#   --keep-material DIR   keeps a copy of the key material as DIR/keymaterial_<KEY_ID>.bin (mode 0600;
#               refuses to overwrite). The seed recommends it: after DeleteKeyMaterial or expiry only the
#               same material can make the CMK usable again, and kmsd never gives it back.
#   --key-spec  the wrapping key spec (default RSA_2048)
#   --expire-unix  KeyMaterialExpireUnix (default 0: never expires)
#
# Environment: KMSCTL (the kmsctl command; default this checkout's bin/kmsctl.js, else `npx kmsctl`),
# KMS_ENDPOINT (which kmsd kmsctl talks to), OPENSSL (default openssl).
#
# Steps: 1 check the CMK, 2 GetParametersForImport (public key and import token files), 3 openssl rand
# (the key material) and its key check value, 4 encrypt it under the public key, 5 base64, 6 keep the
# copy, 7 ImportKeyMaterial, 8 check the CMK is Enabled. Every step and every public artifact is
# printed; the key material never is. The working directory is private (0700) and every file that held
# key material is overwritten with zeros and removed on exit, whatever happens.
#
# Like the seed's and AWS's own OpenSSL recipes, the key check value and RFC 5649 wrap steps hand a key
# to `openssl enc -K` in hex on its command line, visible to other local users while openssl runs: run
# ceremonies on a single-user host.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OPENSSL="${OPENSSL:-openssl}"

usage() {
  sed -n '5,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
die() {
  printf 'import-key-material: %s\n' "$*" >&2
  exit 1
}
step() { printf '\n[%s] %s\n' "$1" "$2"; }
show() { printf '  $ %s\n' "$*"; }

# ------------------------------------------------------------------ arguments, validated before any call
KEY_ID=""
ALGORITHM=""
KEEP_DIR=""
KEY_SPEC="RSA_2048"
EXPIRE_UNIX="0"
while [ $# -gt 0 ]; do
  case "$1" in
    --keep-material) [ $# -ge 2 ] || usage; KEEP_DIR="$2"; shift 2 ;;
    --key-spec) [ $# -ge 2 ] || usage; KEY_SPEC="$2"; shift 2 ;;
    --expire-unix) [ $# -ge 2 ] || usage; EXPIRE_UNIX="$2"; shift 2 ;;
    -h | --help) usage ;;
    -*) die "unknown option $1" ;;
    *)
      if [ -z "$KEY_ID" ]; then KEY_ID="$1"
      elif [ -z "$ALGORITHM" ]; then ALGORITHM="$1"
      else die "unexpected argument $1"; fi
      shift ;;
  esac
done
[ -n "$KEY_ID" ] || usage
ALGORITHM="${ALGORITHM:-RSAES_OAEP_SHA_1}"
[[ "$KEY_ID" =~ ^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$ ]] || die "KEY_ID must be a key id (a lowercase UUID), got \"$KEY_ID\""
case "$ALGORITHM" in
  RSAES_PKCS1_V1_5 | RSAES_OAEP_SHA_1 | RSAES_OAEP_SHA_256 | RSA_AES_KEY_WRAP_SHA_1 | RSA_AES_KEY_WRAP_SHA_256) ;;
  *) die "ALGORITHM must be RSAES_OAEP_SHA_1, RSAES_OAEP_SHA_256, RSAES_PKCS1_V1_5, RSA_AES_KEY_WRAP_SHA_1 or RSA_AES_KEY_WRAP_SHA_256, got \"$ALGORITHM\"" ;;
esac
case "$KEY_SPEC" in RSA_2048 | RSA_3072 | RSA_4096) ;; *) die "--key-spec must be RSA_2048, RSA_3072 or RSA_4096, got \"$KEY_SPEC\"" ;; esac
[[ "$EXPIRE_UNIX" =~ ^[0-9]+$ ]] || die "--expire-unix must be 0 or a UNIX time in seconds, got \"$EXPIRE_UNIX\""
KEEP_FILE=""
if [ -n "$KEEP_DIR" ]; then
  mkdir -p -m 0700 "$KEEP_DIR" || die "cannot create $KEEP_DIR"
  [ -d "$KEEP_DIR" ] && [ -w "$KEEP_DIR" ] || die "--keep-material: $KEEP_DIR is not a writable directory"
  KEEP_FILE="$(cd "$KEEP_DIR" && pwd)/keymaterial_${KEY_ID}.bin"
  [ ! -e "$KEEP_FILE" ] || die "--keep-material: $KEEP_FILE already exists; refusing to overwrite a copy of key material"
fi
command -v "$OPENSSL" >/dev/null || die "openssl not found"

if [ -n "${KMSCTL:-}" ]; then
  read -r -a KMSCTL_CMD <<<"$KMSCTL"
elif [ -f "$ROOT/bin/kmsctl.js" ]; then
  KMSCTL_CMD=(node "$ROOT/bin/kmsctl.js")
else
  KMSCTL_CMD=(npx --no-install kmsctl)
fi

# ------------------------------------------------------------------ private working directory, wiped on exit
WORK="$(mktemp -d "${TMPDIR:-/tmp}/kmsd-import-XXXXXX")"
chmod 0700 "$WORK"
wipe() {
  local f size
  for f in "$WORK"/*; do
    [ -f "$f" ] || continue
    size=$(stat -c %s "$f")
    # Overwrite with zeros in place before unlinking (the key material and the ephemeral AES key).
    [ "$size" -gt 0 ] && dd if=/dev/zero of="$f" bs="$size" count=1 conv=notrunc,fsync status=none 2>/dev/null || true
    rm -f "$f"
  done
  rm -rf "$WORK"
}
trap wipe EXIT
trap 'exit 130' INT TERM HUP

umask 077
cd "$WORK"

kmsctl() {
  local out
  if ! out="$("${KMSCTL_CMD[@]}" "$@")"; then die "kmsctl $1 failed (its error is above)"; fi
  [ -n "$out" ] || die "kmsctl $1 printed nothing (is KMSCTL right? ${KMSCTL_CMD[*]})"
  printf '%s' "$out"
}
# json PATH: one field of kmsctl's JSON output on stdin (jq when installed; node, which kmsctl needs, otherwise).
if command -v jq >/dev/null; then
  json() { jq -r --arg p "$1" 'getpath($p | split(".")) // ""'; }
else
  json() { node -e 'const j = JSON.parse(require("fs").readFileSync(0, "utf8")); const v = process.argv[1].split(".").reduce((o, k) => (o == null ? o : o[k]), j); process.stdout.write(v == null ? "" : String(v));' "$1"; }
fi

printf 'Importing key material into CMK %s with %s (%s wrapping key)\n' "$KEY_ID" "$ALGORITHM" "$KEY_SPEC"
printf 'kmsctl: %s%s\n' "${KMSCTL_CMD[*]}" "${KMS_ENDPOINT:+ (KMS_ENDPOINT=$KMS_ENDPOINT)}"

# ------------------------------------------------------------------ 1. the CMK
step 1/8 "Check the CMK"
show kmsctl DescribeKey --KeyId "$KEY_ID"
META="$(kmsctl DescribeKey --KeyId "$KEY_ID")"
ORIGIN="$(json KeyMetadata.Origin <<<"$META")"
STATE="$(json KeyMetadata.KeyState <<<"$META")"
printf '  Origin %s, KeyState %s, ProtectionLevel %s\n' "$ORIGIN" "$STATE" "$(json KeyMetadata.ProtectionLevel <<<"$META")"
[ "$ORIGIN" = "EXTERNAL" ] || die "CMK $KEY_ID has Origin $ORIGIN; key material can only be imported into a CMK created with --Origin EXTERNAL"
case "$STATE" in PendingImport | Enabled) ;; *) die "CMK $KEY_ID is $STATE; importing needs PendingImport or Enabled" ;; esac

# ------------------------------------------------------------------ 2. parameters
step 2/8 "Obtain the parameters for import (public key and import token)"
show kmsctl GetParametersForImport --KeyId "$KEY_ID" --WrappingAlgorithm "$ALGORITHM" --WrappingKeySpec "$KEY_SPEC" --OutputDir .
PARAMS="$(kmsctl GetParametersForImport --KeyId "$KEY_ID" --WrappingAlgorithm "$ALGORITHM" --WrappingKeySpec "$KEY_SPEC" --OutputDir .)"
PUBLIC_KEY="publickey_${KEY_ID}.bin"
TOKEN_FILE="token_${KEY_ID}.txt"
[ -s "$PUBLIC_KEY" ] && [ -s "$TOKEN_FILE" ] || die "GetParametersForImport did not write $PUBLIC_KEY and $TOKEN_FILE"
printf '  public key: %s, SHA-256 %s\n' "$("$OPENSSL" pkey -pubin -inform DER -in "$PUBLIC_KEY" -noout -text | sed -n '1s/^ *//p')" "$(sha256sum "$PUBLIC_KEY" | cut -d' ' -f1)"
printf '  import token expires %s\n' "$(json TokenExpireTime <<<"$PARAMS")"

# ------------------------------------------------------------------ 3. key material
step 3/8 "Generate the key material (32 random bytes) and its key check value"
show "$OPENSSL" rand -out KeyMaterial.bin 32
"$OPENSSL" rand -out KeyMaterial.bin 32
[ "$(stat -c %s KeyMaterial.bin)" -eq 32 ] || die "openssl rand did not write 32 bytes"
# KCV: the first 3 bytes of AES-256-ECB(material, 16 zero bytes), as HSM vendors and custodians use.
head -c 16 /dev/zero >zero.bin
KCV="$("$OPENSSL" enc -aes-256-ecb -nopad -K "$(od -An -tx1 -v KeyMaterial.bin | tr -d ' \n')" -in zero.bin | od -An -tx1 -v -N 3 | tr -d ' \n')"
[ ${#KCV} -eq 6 ] || die "could not compute the key check value"
printf '  key check value (KCV): %s\n' "$KCV"

# ------------------------------------------------------------------ 4. encrypt
step 4/8 "Encrypt the key material with the public key ($ALGORITHM)"
run() {
  show "$*"
  "$@"
}
oaep() { # oaep IN OUT HASH
  run "$OPENSSL" pkeyutl -encrypt -in "$1" -out "$2" -inkey "$PUBLIC_KEY" -keyform DER -pubin \
    -pkeyopt rsa_padding_mode:oaep -pkeyopt "rsa_oaep_md:$3" -pkeyopt "rsa_mgf1_md:$3"
}
kwp() { # kwp HASH: AWS's RSA_AES_KEY_WRAP: RSA-OAEP(ephemeral AES-256 key) || AES-KWP(ephemeral, material)
  run "$OPENSSL" rand -out EphemeralKey.bin 32
  oaep EphemeralKey.bin EncryptedEphemeralKey.bin "$1"
  show "$OPENSSL" enc -id-aes256-wrap-pad -K '<hex of EphemeralKey.bin>' -iv A65959A6 -in KeyMaterial.bin -out WrappedKeyMaterial.bin
  "$OPENSSL" enc -id-aes256-wrap-pad -K "$(od -An -tx1 -v EphemeralKey.bin | tr -d ' \n')" -iv A65959A6 -in KeyMaterial.bin -out WrappedKeyMaterial.bin
  show "cat EncryptedEphemeralKey.bin WrappedKeyMaterial.bin > EncryptedKeyMaterial.bin"
  cat EncryptedEphemeralKey.bin WrappedKeyMaterial.bin >EncryptedKeyMaterial.bin
}
case "$ALGORITHM" in
  # The seed's command, verbatim.
  RSAES_OAEP_SHA_1) run "$OPENSSL" rsautl -encrypt -in KeyMaterial.bin -oaep -inkey "$PUBLIC_KEY" -keyform DER -pubin -out EncryptedKeyMaterial.bin ;;
  RSAES_PKCS1_V1_5) run "$OPENSSL" rsautl -encrypt -in KeyMaterial.bin -pkcs -inkey "$PUBLIC_KEY" -keyform DER -pubin -out EncryptedKeyMaterial.bin ;;
  RSAES_OAEP_SHA_256) oaep KeyMaterial.bin EncryptedKeyMaterial.bin sha256 ;;
  RSA_AES_KEY_WRAP_SHA_1) kwp sha1 ;;
  RSA_AES_KEY_WRAP_SHA_256) kwp sha256 ;;
esac
[ -s EncryptedKeyMaterial.bin ] || die "openssl wrote no EncryptedKeyMaterial.bin"
printf '  %s bytes\n' "$(stat -c %s EncryptedKeyMaterial.bin)"

# ------------------------------------------------------------------ 5. base64
step 5/8 "Encode the encrypted key material in base64"
run "$OPENSSL" enc -e -base64 -A -in EncryptedKeyMaterial.bin -out EncryptedKeyMaterial_base64.txt

# ------------------------------------------------------------------ 6. keep a copy (before importing)
step 6/8 "Keep a copy of the key material"
if [ -n "$KEEP_FILE" ]; then
  # noclobber: never replace an existing copy, even one created since the check above.
  (set -o noclobber && cat KeyMaterial.bin >"$KEEP_FILE") || die "cannot write $KEEP_FILE (it may exist already); nothing was imported"
  chmod 0600 "$KEEP_FILE"
  cmp -s KeyMaterial.bin "$KEEP_FILE" || die "the copy $KEEP_FILE does not match; nothing was imported"
  printf '  %s (mode 0600, KCV %s): store it offline, under dual control\n' "$KEEP_FILE" "$KCV"
else
  printf '  WARNING: no --keep-material DIR given: no copy is kept. After DeleteKeyMaterial or expiry this\n'
  printf '  CMK can never be used again (only the same material can be re-imported).\n'
fi

# ------------------------------------------------------------------ 7. import
step 7/8 "Import the key material"
show kmsctl ImportKeyMaterial --KeyId "$KEY_ID" --EncryptedKeyMaterial '"$(cat EncryptedKeyMaterial_base64.txt)"' --ImportToken '"$(cat '"$TOKEN_FILE"')"' --KeyMaterialExpireUnix "$EXPIRE_UNIX"
if ! "${KMSCTL_CMD[@]}" ImportKeyMaterial --KeyId "$KEY_ID" --EncryptedKeyMaterial "$(cat EncryptedKeyMaterial_base64.txt)" \
  --ImportToken "$(cat "$TOKEN_FILE")" --KeyMaterialExpireUnix "$EXPIRE_UNIX" >/dev/null; then
  [ -z "$KEEP_FILE" ] || printf 'import-key-material: the copy %s was kept: if the import did happen after all, it is the CMK'"'"'s material\n' "$KEEP_FILE" >&2
  die "ImportKeyMaterial failed (its error is above)"
fi

# ------------------------------------------------------------------ 8. check
step 8/8 "Check the CMK"
META="$(kmsctl DescribeKey --KeyId "$KEY_ID")"
STATE="$(json KeyMetadata.KeyState <<<"$META")"
EXPIRES="$(json KeyMetadata.MaterialExpireTime <<<"$META")"
printf '  KeyState %s, MaterialExpireTime %s, MaterialImportPath %s\n' "$STATE" "${EXPIRES:-never}" "$(json KeyMetadata.MaterialImportPath <<<"$META")"
[ "$STATE" = "Enabled" ] || die "CMK $KEY_ID is $STATE after the import, not Enabled"
printf '\nDone: CMK %s holds the imported key material (KCV %s).\n' "$KEY_ID" "$KCV"
