#!/usr/bin/env bash
# Create a small private PKI for the audit webhook: a CA, the webhook's server
# certificate and the client certificate the kube-apiserver presents (mTLS).
#
#   certs/gen-certs.sh --out ./healert-pki \
#       --san DNS:healert-webhook.healert-system.svc --san IP:127.0.0.1 --san IP:10.96.0.50
#
# See certs/README.md. Requires openssl (1.1.1 or newer).
set -euo pipefail
umask 077

usage() {
  cat <<'USAGE'
Usage: gen-certs.sh --out DIR --san TYPE:VALUE [--san TYPE:VALUE ...] [options]

Creates in DIR:
  ca.crt, ca.key                          certificate authority (reused if present)
  server.crt, server.key                  webhook server certificate with the given SANs
  apiserver-client.crt, apiserver-client.key
                                          client certificate for the kube-apiserver

Options:
  --out DIR          output directory (created with mode 0700 if missing)
  --san TYPE:VALUE   subject alternative name of the server certificate; TYPE is DNS or IP.
                     Repeat for each name. At least one is required.
  --client-cn NAME   common name of the apiserver client certificate
                     (default: kube-apiserver-audit; put it in HEALERT_TLS_CLIENT_NAMES)
  --key-type TYPE    ec (ECDSA P-256, default) or rsa (RSA 2048)
  --days N           validity of the server and client certificates (default: 397)
  --ca-days N        validity of a newly created CA (default: 3650)
  --new-ca           create a new CA even if DIR already holds one
  --force            overwrite existing server and client certificates
  -h, --help         show this help
USAGE
}

die() {
  echo "gen-certs.sh: $*" >&2
  exit 2
}

out=""
sans=()
client_cn="kube-apiserver-audit"
key_type="ec"
days=397
ca_days=3650
new_ca=false
force=false

while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) [[ $# -ge 2 ]] || die "--out needs a value"; out="$2"; shift 2 ;;
    --san) [[ $# -ge 2 ]] || die "--san needs a value"; sans+=("$2"); shift 2 ;;
    --client-cn) [[ $# -ge 2 ]] || die "--client-cn needs a value"; client_cn="$2"; shift 2 ;;
    --key-type) [[ $# -ge 2 ]] || die "--key-type needs a value"; key_type="$2"; shift 2 ;;
    --days) [[ $# -ge 2 ]] || die "--days needs a value"; days="$2"; shift 2 ;;
    --ca-days) [[ $# -ge 2 ]] || die "--ca-days needs a value"; ca_days="$2"; shift 2 ;;
    --new-ca) new_ca=true; shift ;;
    --force) force=true; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

[[ -n "$out" ]] || { usage >&2; die "--out is required"; }
[[ ${#sans[@]} -gt 0 ]] || { usage >&2; die "at least one --san is required"; }
[[ "$days" =~ ^[1-9][0-9]*$ ]] || die "--days must be a positive integer"
[[ "$ca_days" =~ ^[1-9][0-9]*$ ]] || die "--ca-days must be a positive integer"
[[ "$client_cn" =~ ^[A-Za-z0-9._:-]+$ ]] || die "--client-cn has unexpected characters: $client_cn"
command -v openssl >/dev/null 2>&1 || die "openssl not found in PATH"

# Validate the SANs and build the extension value, e.g. DNS:a.svc,IP:10.96.0.50.
san_list=""
server_cn=""
for san in "${sans[@]}"; do
  type="${san%%:*}"
  value="${san#*:}"
  [[ "$san" == *:* && -n "$value" ]] || die "--san must look like DNS:name or IP:address, got: $san"
  case "$type" in
    DNS)
      [[ "$value" =~ ^[A-Za-z0-9*]([A-Za-z0-9.-]*[A-Za-z0-9])?$ ]] || die "bad DNS name: $value"
      [[ -n "$server_cn" ]] || server_cn="$value"
      ;;
    IP)
      [[ "$value" =~ ^[0-9.]+$ || "$value" =~ ^[0-9A-Fa-f:]+$ ]] || die "bad IP address: $value"
      ;;
    *) die "--san type must be DNS or IP, got: $type" ;;
  esac
  san_list+="${san_list:+,}${type}:${value}"
done
[[ -n "$server_cn" ]] || server_cn="healert-webhook"

case "$key_type" in
  ec) keygen=(genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256) ;;
  rsa) keygen=(genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048) ;;
  *) die "--key-type must be ec or rsa, got: $key_type" ;;
esac

mkdir -p "$out"
chmod 0700 "$out"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

new_key() {  # new_key PATH: a private key readable by its owner only
  openssl "${keygen[@]}" -out "$1" 2>/dev/null
  chmod 0600 "$1"
}

serial() {  # a random positive 127-bit serial number
  printf '0x%s' "$(openssl rand -hex 16 | sed 's/^./4/')"
}

# sign NAME SUBJECT_CN EXTENSIONS: key, CSR and certificate signed by the CA.
sign() {
  local name="$1" cn="$2" extensions="$3"
  if [[ -e "$out/$name.crt" && "$force" != true ]]; then
    die "$out/$name.crt exists; pass --force to replace it"
  fi
  new_key "$out/$name.key"
  openssl req -new -key "$out/$name.key" -subj "/CN=$cn" -out "$work/$name.csr"
  printf '%s\n' "$extensions" > "$work/$name.ext"
  openssl x509 -req -in "$work/$name.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" \
    -set_serial "$(serial)" -days "$days" -sha256 -extfile "$work/$name.ext" \
    -out "$out/$name.crt" 2>/dev/null
  chmod 0644 "$out/$name.crt"
}

if [[ "$new_ca" == true || ! -s "$out/ca.crt" || ! -s "$out/ca.key" ]]; then
  new_key "$out/ca.key"
  openssl req -x509 -new -key "$out/ca.key" -sha256 -days "$ca_days" \
    -set_serial "$(serial)" -subj "/CN=healert-webhook-ca" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" \
    -out "$out/ca.crt"
  chmod 0644 "$out/ca.crt"
  ca_state="created"
else
  ca_state="reused"
fi

leaf_usage="digitalSignature"
[[ "$key_type" == rsa ]] && leaf_usage="digitalSignature,keyEncipherment"

sign server "$server_cn" "basicConstraints=critical,CA:FALSE
keyUsage=critical,$leaf_usage
extendedKeyUsage=serverAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
subjectAltName=$san_list"

sign apiserver-client "$client_cn" "basicConstraints=critical,CA:FALSE
keyUsage=critical,$leaf_usage
extendedKeyUsage=clientAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
subjectAltName=DNS:$client_cn"

openssl verify -CAfile "$out/ca.crt" "$out/server.crt" "$out/apiserver-client.crt" >/dev/null

cat <<EOF
Wrote to $out ($key_type keys, mode 0600):
  ca.crt, ca.key                              CA "healert-webhook-ca" ($ca_state)
  server.crt, server.key                      CN=$server_cn, SAN $san_list, $days days
  apiserver-client.crt, apiserver-client.key  CN=$client_cn (clientAuth), $days days

Next steps:
  # the webhook's TLS Secret (server certificate, key, and the CA that signs client certificates)
  kubectl -n healert-system create secret generic healert-webhook-tls --type=kubernetes.io/tls \\
    --from-file=tls.crt=$out/server.crt --from-file=tls.key=$out/server.key \\
    --from-file=ca.crt=$out/ca.crt
  # on every control-plane node (see manifests/apiserver/README.md)
  install -d -m 0700 /etc/kubernetes/healert
  install -m 0644 $out/ca.crt $out/apiserver-client.crt /etc/kubernetes/healert/
  install -m 0600 $out/apiserver-client.key /etc/kubernetes/healert/
Keep ca.key offline: it is only needed to issue new certificates.
EOF
