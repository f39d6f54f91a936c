#!/usr/bin/env bash
# Development PKI for kmsd's mutual TLS: a CA, a server certificate for the loopback addresses, and
# one client certificate per principal. NOT for production: the CA key sits beside its certificate.
#
#   scripts/dev-ca.sh [-o OUTDIR] [PRINCIPAL ...]
#
# OUTDIR defaults to ./var/dev-ca. PRINCIPAL is a name that becomes the subject CN (admin, app-1) or
# uri:URI for a certificate whose principal is a URI SAN (uri:spiffe://kmsd.dev/app-1). Without
# principals: admin, custodian-1, app-1, app-2. Files are never overwritten: an existing CA is reused
# for new client certificates; an existing client certificate is left alone. Keys are 0600.
#
# Output:  ca.crt ca.key  server.crt server.key  client-NAME.crt client-NAME.key
# Use:     kmsd --tls-cert OUT/server.crt --tls-key OUT/server.key --tls-client-ca OUT/ca.crt --policy P
#          kmsctl --ca OUT/ca.crt --cert OUT/client-admin.crt --key OUT/client-admin.key ListKeys
set -euo pipefail

out=./var/dev-ca
if [[ "${1:-}" == "-o" ]]; then
  out=${2:?-o needs a directory}
  shift 2
fi
principals=("$@")
if [[ ${#principals[@]} -eq 0 ]]; then principals=(admin custodian-1 app-1 app-2); fi

command -v openssl >/dev/null || { echo "dev-ca.sh: openssl is not installed" >&2; exit 1; }
umask 077
mkdir -p "$out"
days=825

newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; chmod 600 "$1"; }

if [[ ! -e "$out/ca.crt" ]]; then
  newkey "$out/ca.key"
  openssl req -x509 -new -key "$out/ca.key" -sha256 -days "$days" -subj "/O=kmsd development/CN=kmsd dev CA" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$out/ca.crt"
  echo "created $out/ca.crt (CA) sha256=$(openssl x509 -in "$out/ca.crt" -noout -fingerprint -sha256 | cut -d= -f2)"
else
  echo "reusing $out/ca.crt"
fi

# issue NAME SUBJECT EXTFILE-CONTENT
issue() {
  local name=$1 subject=$2 ext=$3
  if [[ -e "$out/$name.crt" ]]; then
    echo "exists, left alone: $out/$name.crt"
    return
  fi
  newkey "$out/$name.key"
  openssl req -new -key "$out/$name.key" -subj "$subject" -out "$out/$name.csr"
  printf '%s\n' "$ext" >"$out/$name.ext"
  openssl x509 -req -in "$out/$name.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial -sha256 -days "$days" \
    -extfile "$out/$name.ext" -out "$out/$name.crt" 2>/dev/null
  rm -f "$out/$name.csr" "$out/$name.ext"
  chmod 644 "$out/$name.crt"
  echo "created $out/$name.crt subject=$(openssl x509 -in "$out/$name.crt" -noout -subject -nameopt compat | sed 's/^subject=//')"
}

issue server "/O=kmsd development/CN=localhost" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost"

for p in "${principals[@]}"; do
  if [[ "$p" == uri:* ]]; then
    uri=${p#uri:}
    file=$(printf '%s' "${uri##*/}" | tr -c 'A-Za-z0-9_.-' '_')
    issue "client-$file" "/O=kmsd development/CN=$file" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth
subjectAltName=URI:$uri"
  else
    [[ "$p" =~ ^[A-Za-z0-9_.@-]{1,64}$ ]] || { echo "dev-ca.sh: principal \"$p\" must be 1-64 of A-Z a-z 0-9 _ . @ - (or uri:URI)" >&2; exit 2; }
    issue "client-$p" "/O=kmsd development/CN=$p" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
  fi
done
chmod 644 "$out/ca.crt"
