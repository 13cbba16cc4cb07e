#!/bin/sh
# The TLS certificates of the tests (tests/data/tls), made once and committed: a test CA,
# sipguard's server certificate, peers' client certificates, and one from another CA.
# Valid for 100 years; EC P-256 keys. Run again only to change them:
#   sh tools/make_test_certs.sh tests/data/tls
set -eu
out=${1:-tests/data/tls}
mkdir -p "$out"
cd "$out"
days=36500
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key"; }
ca() {  # ca NAME SUBJECT
    key "$1"
    openssl req -x509 -new -key "$1.key" -subj "$2" -days $days -out "$1.crt" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign"
}
leaf() {  # leaf NAME CA SUBJECT SAN
    key "$1"
    openssl req -new -key "$1.key" -subj "$3" -out "$1.csr"
    printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n' \
        "$4" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA "$2.crt" -CAkey "$2.key" -CAcreateserial \
        -days $days -extfile "$1.ext" -out "$1.crt"
    rm -f "$1.csr" "$1.ext"
}
ca ca "/CN=sipguard test CA"
ca other-ca "/CN=another CA"
leaf sipguard ca "/CN=sipguard.test" "DNS:sipguard.test,IP:127.0.0.1"
leaf sbc1 ca "/CN=sbc1.carrier.test" "DNS:sbc1.carrier.test"
leaf sipuri ca "/CN=ignored.test" "URI:sip:pbx.customer.test"
leaf stranger ca "/CN=stranger.test" "DNS:stranger.test"
leaf forged other-ca "/CN=sbc1.carrier.test" "DNS:sbc1.carrier.test"
rm -f ./*.srl
