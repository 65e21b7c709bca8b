"""Offline stand-in for ansible-test's get-pip bootstrap script.

ansible-test runs this as `python get_pip.py <pip options> pip==X ...` inside
each fresh sanity virtualenv. The real script is downloaded from a host that
is unreachable offline; this one bootstraps pip from the interpreter's own
ensurepip wheel, then installs what ansible-test asked for from the package
index (ansible-test scrubs the environment, so the CA bundle is passed
explicitly when the system has one).
"""
import ensurepip
import os
import subprocess
import sys

ensurepip.bootstrap()
args = [a for a in sys.argv[1:] if a not in ('--no-setuptools', '--no-wheel')]
cert = '/etc/ssl/certs/ca-certificates.crt'
if os.path.exists(cert):
    args = ['--cert', cert] + args
sys.exit(subprocess.call([sys.executable, '-m', 'pip', 'install'] + args))
