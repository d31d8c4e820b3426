#!/usr/bin/env bash
# Self-signed CA + SuperLink server certificate for a Flower deployment (TLS).
#   scripts/make_certs.sh OUT_DIR [HOST ...]
# Writes OUT_DIR/ca.crt, ca.key, server.pem, server.key. The server certificate is valid for
# 127.0.0.1, localhost and every HOST given (IP addresses or DNS names of the SuperLink machine).
# Hospitals get ca.crt only (--root-certificates); keep ca.key offline.
set -euo pipefail
out=${1:?usage: make_certs.sh OUT_DIR [HOST ...]}
shift
mkdir -p "$out"
san="IP:127.0.0.1,DNS:localhost"
for h in "$@"; do
  if [[ $h =~ ^[0-9.]+$ ]]; then san="$san,IP:$h"; else san="$san,DNS:$h"; fi
done
openssl genrsa -out "$out/ca.key" 4096 2>/dev/null
openssl req -x509 -new -key "$out/ca.key" -sha256 -days 365 -subj "/CN=fedclip-consortium-ca" -out "$out/ca.crt"
openssl genrsa -out "$out/server.key" 4096 2>/dev/null
openssl req -new -key "$out/server.key" -subj "/CN=fedclip-superlink" -out "$out/server.csr"
printf "subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n" \
  "$san" > "$out/server.ext"
openssl x509 -req -in "$out/server.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial -days 365 -sha256 \
  -extfile "$out/server.ext" -out "$out/server.pem" 2>/dev/null
rm -f "$out/server.csr" "$out/server.ext" "$out/ca.srl"
chmod 600 "$out/ca.key" "$out/server.key"
echo "wrote $out/ca.crt $out/server.pem $out/server.key (SAN: $san)"
