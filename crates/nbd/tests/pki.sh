#!/bin/sh
# Test certificates for NBD over TLS in QEMU's layout, made in the current
# directory with the openssl command (EC P-256 keys, 30 days):
#   server/  ca-cert.pem server-cert.pem server-key.pem (SAN 127.0.0.1, localhost)
#   client/  ca-cert.pem client-cert.pem client-key.pem (signed by the same CA)
#   rogue/   ca-cert.pem (the real CA, to trust the server) and a client
#            certificate signed by another CA
# Used by crates/nbd/tests/tls.rs and crates/cli/tests/nbd_tls.rs.
set -e
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:prime256v1 -out "$1" 2>/dev/null; }
ca() { # DIR NAME
    key "$1/ca-key.pem"
    openssl req -x509 -new -key "$1/ca-key.pem" -out "$1/ca-cert.pem" -days 30 -subj "/CN=$2" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
}
leaf() { # CA-DIR OUT-CERT OUT-KEY CN EXTENSIONS
    key "$3"
    openssl req -new -key "$3" -out "$2.csr" -subj "/CN=$4"
    printf '%b' "$5" > "$2.ext"
    openssl x509 -req -in "$2.csr" -CA "$1/ca-cert.pem" -CAkey "$1/ca-key.pem" -CAcreateserial \
        -out "$2" -days 30 -extfile "$2.ext" 2>/dev/null
}
mkdir -p ca other server client rogue psk psk-client psk-wrong
ca ca offsite-test-ca
ca other offsite-other-ca
usage='keyUsage=digitalSignature,keyEncipherment\n'
leaf ca server/server-cert.pem server/server-key.pem localhost \
    "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n$usage"
leaf ca client/client-cert.pem client/client-key.pem client \
    "extendedKeyUsage=clientAuth\n$usage"
leaf other rogue/client-cert.pem rogue/client-key.pem rogue \
    "extendedKeyUsage=clientAuth\n$usage"
for d in server client rogue; do cp ca/ca-cert.pem "$d/"; done
