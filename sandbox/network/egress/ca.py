"""The sandbox's own certificate authority, for the egress proxy's TLS interception
(docs/network.md, "Secrets").

One CA per sandbox (`SandboxCA`): an ECDSA P-256 key and a self-signed certificate, valid for
VALIDITY (short), constrained to the names the sandbox's interception covers (NameConstraints,
critical: even a stolen key signs for nothing else), made in memory by the supervisor when the
plan has `egress.http` rules or secrets. Leaf certificates are minted per host on demand and kept
per sandbox (`server_context(host)`). The keys exist only in this process's memory: an
`ssl.SSLContext` loads them from a memfd (closed at once), never from a file; the sandbox gets the
certificate only (`bundle()`: the host's CA bundle + this CA, bound over the root's CA bundle paths
by sandbox/rootfs.py; `trust_env()`: SSL_CERT_FILE, REQUESTS_CA_BUNDLE, NODE_EXTRA_CA_CERTS,
CURL_CA_BUNDLE).
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import threading

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=7)       # a sandbox running longer needs a new launch
SKEW = datetime.timedelta(minutes=5)        # not-before in the past: clocks of the sandbox's peers
HOST_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
HOST_BUNDLES = (HOST_BUNDLE, "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/ca-bundle.pem", "/etc/ssl/cert.pem")
MAX_HOST_BUNDLE = 4 << 20                   # bytes read of the host's bundle
MAX_LEAVES = 1024                           # leaf certificates kept per sandbox
# inside the sandbox (sandbox/rootfs.py binds the bundle there, made when missing)
BUNDLE_IN_SANDBOX = "/etc/ssl/certs/ca-certificates.crt"
TRUST_ENV = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "CURL_CA_BUNDLE")


def trust_env() -> dict:
    return {k: BUNDLE_IN_SANDBOX for k in TRUST_ENV}


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _san(host: str):
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _constraints(hosts) -> x509.NameConstraints | None:
    permitted, seen = [], set()
    for h in hosts:
        h = h[2:] if h.startswith("*.") else h
        if h in seen:
            continue
        seen.add(h)
        try:
            ip = ipaddress.ip_address(h)
            permitted.append(x509.IPAddress(ipaddress.ip_network(f"{ip}/{ip.max_prefixlen}")))
        except ValueError:
            permitted.append(x509.DNSName(h))
    if not permitted:
        return None
    # no IP host: every address excluded (a permitted DNS subtree alone leaves IP names open)
    excluded = None if any(isinstance(g, x509.IPAddress) for g in permitted) else \
        [x509.IPAddress(ipaddress.ip_network("0.0.0.0/0")), x509.IPAddress(ipaddress.ip_network("::/0"))]
    return x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=excluded)


class SandboxCA:
    """A per-sandbox CA (in memory only). hosts: the names intercepted (NameConstraints)."""

    def __init__(self, sandbox_id: str, hosts=()):
        self.sandbox_id = sandbox_id
        self.hosts = tuple(hosts)
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        self.not_after = now + VALIDITY
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pysandbox"),
                          x509.NameAttribute(NameOID.COMMON_NAME, f"pysandbox sandbox {sandbox_id} CA")])
        pub = self._key.public_key()
        b = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(pub)
             .serial_number(x509.random_serial_number()).not_valid_before(now - SKEW)
             .not_valid_after(self.not_after)
             .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
             .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                          data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                          crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False))
        nc = _constraints(self.hosts)
        if nc is not None:
            b = b.add_extension(nc, critical=True)
        self.cert = b.sign(self._key, hashes.SHA256())
        self.name = name
        self._leaves: dict = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<sandbox CA {self.sandbox_id}>"

    def cert_pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def bundle(self) -> str:
        """The sandbox's trust store: the host's CA bundle (first found, bounded) + this CA."""
        host = ""
        for path in HOST_BUNDLES:
            try:
                with open(path, "rb") as f:
                    host = f.read(MAX_HOST_BUNDLE).decode("ascii", "replace")
                break
            except OSError:
                continue
        if host and not host.endswith("\n"):
            host += "\n"
        return host + f"# pysandbox: this sandbox's CA (egress interception)\n{self.cert_pem()}"

    def leaf(self, host: str):
        """(certificate, key) for `host`, minted on first use and kept."""
        host = host.lower().rstrip(".")
        with self._lock:
            got = self._leaves.get(host)
            if got is not None:
                return got
            key = ec.generate_private_key(ec.SECP256R1())
            now = _now()
            subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])])
            cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(self.name)
                    .public_key(key.public_key()).serial_number(x509.random_serial_number())
                    .not_valid_before(now - SKEW).not_valid_after(self.not_after)
                    .add_extension(x509.SubjectAlternativeName([_san(host)]), critical=False)
                    .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                    .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                                 key_encipherment=False, data_encipherment=False,
                                                 key_agreement=False, key_cert_sign=False, crl_sign=False,
                                                 encipher_only=False, decipher_only=False), critical=True)
                    .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                    .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                                   critical=False)
                    .sign(self._key, hashes.SHA256()))
            if len(self._leaves) >= MAX_LEAVES:
                self._leaves.pop(next(iter(self._leaves)))
            got = self._leaves[host] = (cert, key, None)
            return got

    def server_context(self, host: str) -> ssl.SSLContext:
        """A server-side SSLContext presenting the leaf of `host` (chain: leaf + this CA), made once
        per host; the key is handed to OpenSSL through a memfd, never a file."""
        cert, key, ctx = self.leaf(host)
        if ctx is not None:
            return ctx
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(["http/1.1"])
        pem = (cert.public_bytes(serialization.Encoding.PEM) + self.cert.public_bytes(serialization.Encoding.PEM)
               + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
        fd = os.memfd_create("pysandbox-leaf", os.MFD_CLOEXEC)
        try:
            os.write(fd, pem)
            ctx.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        with self._lock:
            self._leaves[host.lower().rstrip(".")] = (cert, key, ctx)
        return ctx
