#!/usr/bin/env bash
# Make what a TLS + SuperNode-authentication deployment needs (PLATFORM.md §4):
#   ca.crt / ca.key            a private certificate authority
#   server.pem / server.key    the SuperLink's certificate, signed by the CA, with a SAN
#                              for every address SuperNodes and the flwr CLI dial
#   <node>, <node>.pub         one OpenSSH ECDSA P-384 key pair per SuperNode
#
# Usage: scripts/make-certs.sh OUT_DIR "SAN,SAN,..." NODE [NODE ...]
#   e.g. scripts/make-certs.sh certs "DNS:localhost,IP:127.0.0.1,DNS:superlink" node-0 node-1 node-2
# Copy ca.crt to every machine; each node gets only its own private key. Register the
# public keys with `flwr supernode register certs/node-0.pub <connection>`.
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n 2,12p "$0"; exit 2
fi
out=$1; sans=$2; shift 2
mkdir -p "$out"
cd "$out"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 -subj "/CN=fedzg-ca" \
  -keyout ca.key -out ca.crt 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=superlink" \
  -keyout server.key -out server.csr 2>/dev/null
printf "subjectAltName=%s\n" "$sans" > san.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 \
  -extfile san.ext -out server.pem 2>/dev/null
rm -f server.csr san.ext ca.srl
for node in "$@"; do
  rm -f "$node" "$node.pub"
  ssh-keygen -q -t ecdsa -b 384 -N "" -C "$node" -f "$node"
done
chmod 600 ./*.key "$@" 2>/dev/null || true
echo "made CA, server certificate ($sans) and ${#} node key pair(s) in $(pwd)"
