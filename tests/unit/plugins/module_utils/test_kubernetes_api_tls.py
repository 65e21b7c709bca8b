"""The Kubernetes API client trusts exactly the CA of the infra outputs
(``kubernetes.ca_cert``), against a real TLS server on loopback, and leaves
no file behind: a controller that ends with ``os._exit`` (the detached
rollout controller does) or is killed never runs ``atexit``, so a CA written
to a temp file stayed in the temp dir once per controller."""
import datetime
import http.server
import ipaddress
import json
import os
import ssl
import subprocess
import sys
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.base import PlatformError
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.kubernetes.api import Kube


def _self_signed(tmp_path, name):
    """(PEM of a self-signed certificate for 127.0.0.1, cert file, key file)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    cert_file, key_file = tmp_path / (name + ".crt"), tmp_path / (name + ".key")
    cert_file.write_text(pem)
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return pem, cert_file, key_file


class _Namespace(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802 - http.server's name
        body = json.dumps({"kind": "Namespace", "apiVersion": "v1",
                           "metadata": {"name": self.path.rsplit("/", 1)[-1]}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(name="api")
def _api(tmp_path):
    """A TLS server on loopback answering GET namespace; (its CA PEM, URL)."""
    pem, cert_file, key_file = _self_signed(tmp_path, "api")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Namespace)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield pem, "https://127.0.0.1:%d" % server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _kube(pem, url):
    return Kube({"api_server": url, "namespace": "phoenix", "ca_cert": pem, "token": "t0ken"})


def test_the_outputs_ca_is_trusted_and_no_other(api, tmp_path):
    pem, url = api
    kube = _kube(pem, url)
    assert kube.call("read namespace", kube.core.read_namespace, "phoenix").metadata.name == "phoenix"
    other, _cert, _key = _self_signed(tmp_path, "other")
    wrong = _kube(other, url)
    with pytest.raises(PlatformError) as err:
        wrong.call("read namespace", wrong.core.read_namespace, "phoenix")
    assert "TLS" in err.value.msg and "kubernetes.ca_cert" in err.value.msg and not err.value.transient


@pytest.mark.parametrize("ending", ["os._exit(0)", "os.kill(os.getpid(), signal.SIGKILL)", "sys.exit(0)"])
def test_a_controller_leaves_no_ca_file_however_it_ends(api, tmp_path, ending):
    pem, url = api
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    code = ("import os, signal, sys\n"
            "from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.kubernetes.api import Kube\n"
            "kube = Kube({'api_server': %r, 'namespace': 'phoenix', 'ca_cert': %r, 'token': 't'})\n"
            "assert kube.call('read', kube.core.read_namespace, 'phoenix').metadata.name == 'phoenix'\n"
            "print('read', flush=True)\n%s\n" % (url, pem, ending))
    proc = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, TMPDIR=str(private_tmp), PYTHONPATH=os.pathsep.join(sys.path)),
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.stdout.strip() == "read", proc.stderr[-2000:]
    assert sorted(os.listdir(private_tmp)) == []
