"""The local cluster's certificates (phoenix_infra.k8s_local.pki)."""
import ipaddress
import os
import stat

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from phoenix_infra.k8s_local import pki


def _cert(d, stem):
    return x509.load_pem_x509_certificate((d / f"{stem}.crt").read_bytes())


def _signed_by(cert, ca):
    ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    return cert.issuer == ca.subject


def test_a_ca_signs_serving_and_client_certificates_kept_private(tmp_path):
    d = tmp_path / "pki"
    out = pki.generate(str(d), address="127.30.0.1", service_ip="10.214.0.1", node_name="phoenix-k8s-local")
    ca = _cert(d, "ca")
    assert out["ca_cert"] == (d / "ca.crt").read_text()
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    serving = _cert(d, "serving")
    assert _signed_by(serving, ca)
    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {ipaddress.ip_address("127.30.0.1"), ipaddress.ip_address("10.214.0.1")} <= set(
        sans.get_values_for_type(x509.IPAddress))
    admin = _cert(d, "admin").subject
    assert admin.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    kubelet = _cert(d, "kubelet").subject
    assert kubelet.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:node:phoenix-k8s-local"
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    assert {stat.S_IMODE(os.stat(f).st_mode) for f in d.iterdir()} == {0o600}


def test_existing_files_are_kept_and_a_new_ca_signs_everything_again(tmp_path):
    d = tmp_path / "pki"
    args = dict(address="127.30.0.1", service_ip="10.214.0.1", node_name="n")
    pki.generate(str(d), **args)
    first = (d / "serving.crt").read_bytes()
    pki.generate(str(d), **args)
    assert (d / "serving.crt").read_bytes() == first
    (d / "ca.crt").unlink()
    pki.generate(str(d), **args)
    assert (d / "serving.crt").read_bytes() != first
    assert _signed_by(_cert(d, "serving"), _cert(d, "ca"))
