"""Test certificates shaped like the ones istiod issues to ztunnel (hbone.md section 5): an
ECDSA P-256 key, an empty subject, one critical SPIFFE URI SAN, KU digitalSignature +
keyEncipherment, EKU serverAuth + clientAuth, notBefore two minutes in the past."""

import datetime
import secrets

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def _write_key(key, path):
    with open(path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))


def _write_cert(cert, path):
    with open(path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))


def mint_ca(out_cert, out_key, name="nodemesh-test-ca", days=3650):
    """A self-signed root: the trust anchor of one test mesh (a second one plays 'another CA')."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "nodemesh-test"),
                         x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(hours=1))
            .not_valid_after(_now() + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256()))
    _write_cert(cert, out_cert)
    _write_key(key, out_key)


def mint_leaf(ca_cert, ca_key, spiffe_id, out_cert, out_key, days=1, expired=False,
              client_auth=True, san=True):
    """A workload leaf signed by the CA. `san=False` puts the ID in the CN instead (the 'DNS
    or CN identity' mistake a HBONE peer must refuse); `expired` moves notAfter a day back."""
    with open(ca_cert, "rb") as f:
        ca = x509.load_pem_x509_certificate(f.read())
    with open(ca_key, "rb") as f:
        # load_pem_private_key reads both PKCS#8 ("PRIVATE KEY") and SEC1 ("EC PRIVATE KEY").
        signer = serialization.load_pem_private_key(f.read(), password=None)
    if not isinstance(signer, ec.EllipticCurvePrivateKey):
        raise SystemExit(f"{ca_key}: the CA key must be an EC key")
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    if expired:
        not_before, not_after = now - datetime.timedelta(days=2), now - datetime.timedelta(days=1)
    else:
        not_before, not_after = now - datetime.timedelta(minutes=2), now + datetime.timedelta(days=days)
    # An empty subject is what istiod issues; RFC 5280 then wants the SAN critical.
    subject = x509.Name([]) if san else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, spiffe_id)])
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client_auth else [])
    builder = (x509.CertificateBuilder()
               .subject_name(subject).issuer_name(ca.subject)
               .public_key(key.public_key())
               .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1)
               .not_valid_before(not_before).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True,
                                            content_commitment=False, data_encipherment=False,
                                            key_agreement=False, key_cert_sign=False, crl_sign=False,
                                            encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()),
                              critical=False))
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=True)
    _write_cert(builder.sign(signer, hashes.SHA256()), out_cert)
    _write_key(key, out_key)


def uri_sans(der):
    """The URI SANs of a DER certificate, in order (empty when it has none)."""
    cert = x509.load_der_x509_certificate(der)
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return ext.value.get_values_for_type(x509.UniformResourceIdentifier)


def spiffe_ids(der):
    """The URI SANs shaped like spiffe://TD/ns/NS/sa/SA (exactly five path segments, as
    ztunnel parses them), in order; ztunnel's authz identity is the first."""
    ids = []
    for uri in uri_sans(der) if der else []:
        parts = uri[len("spiffe://"):].split("/") if uri.startswith("spiffe://") else []
        if len(parts) == 5 and parts[1] == "ns" and parts[3] == "sa" and all(parts):
            ids.append(uri)
    return ids


def serial_hex(der):
    """The certificate's serial number in upper-case hex, without leading zeros."""
    from cryptography import x509
    return format(x509.load_der_x509_certificate(der).serial_number, "X") if der else None


def pem_spiffe_id(path):
    """The first SPIFFE ID of the first certificate of a PEM file (our own identity)."""
    with open(path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    ids = spiffe_ids(cert.public_bytes(serialization.Encoding.DER))
    return ids[0] if ids else None
