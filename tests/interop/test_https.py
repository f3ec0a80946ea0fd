"""HTTPS interop: deadsfu gets its certificate for sfu.test from a local ACME CA (pebble, see
pebble_harness.py) by TLS-ALPN-01; then aiortc publishes H264 over WHIP and an aiortc WHEP
viewer decodes it, all over https://sfu.test:PORT, a name only the test and pebble's DNS
(challtestsrv) resolve, to 127.0.0.2.

Needs Debian's pebble package (pebble, pebble-challtestsrv), curl for tests/acme/dns-hook.sh,
and DEADSFU_BIN as test_aiortc.py does. test_pebble_harness checks the harness alone.
"""

import asyncio
import base64
import json
import os
import ssl
import subprocess
import time
import urllib.request

import aiohttp
import pytest
import dns.message
import dns.query
import test_aiortc as interop
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from pebble_harness import Pebble, free_tcp_port
from test_aiortc import decoders  # noqa: F401 (a fixture)

DOMAIN = "sfu.test"
NODE_IP = "127.0.0.2"
ACME_TIMEOUT = 60.0  # seconds from deadsfu's start to HTTPS with pebble's certificate
DNS_HOOK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "acme", "dns-hook.sh")


def two_free_ports(host: str) -> tuple[int, int]:
    first = free_tcp_port(host)
    second = free_tcp_port(host)
    while second == first:
        second = free_tcp_port(host)
    return first, second


# --- the harness alone ------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def place_order(directory_url: str, ca_path: str, domain: str) -> str:
    """A minimal ACME client: new account, new order for `domain`; returns the order URL."""
    context = ssl.create_default_context(cafile=ca_path)
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    directory = json.load(opener.open(directory_url, timeout=5))
    key = ec.generate_private_key(ec.SECP256R1())
    numbers = key.public_key().public_numbers()
    jwk = {"crv": "P-256", "kty": "EC", "x": b64url(numbers.x.to_bytes(32, "big")),
           "y": b64url(numbers.y.to_bytes(32, "big"))}  # fmt: skip

    def post(url, payload, kid=None):
        nonce_req = urllib.request.Request(directory["newNonce"], method="HEAD")
        nonce = opener.open(nonce_req, timeout=5).headers["Replay-Nonce"]
        protected = {"alg": "ES256", "nonce": nonce, "url": url}
        protected.update({"kid": kid} if kid else {"jwk": jwk})
        protected_b64 = b64url(json.dumps(protected).encode())
        payload_b64 = b64url(json.dumps(payload).encode())
        signature = key.sign(f"{protected_b64}.{payload_b64}".encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(signature)
        body = {"protected": protected_b64, "payload": payload_b64,
                "signature": b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))}  # fmt: skip
        req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/jose+json"})  # fmt: skip
        return opener.open(req, timeout=5).headers["Location"]

    account = post(directory["newAccount"], {"termsOfServiceAgreed": True})
    return post(directory["newOrder"], {"identifiers": [{"type": "dns", "value": domain}]}, account)


def lookup(pebble: Pebble, name: str, rdtype: str) -> list[str]:
    host, port = pebble.dns_server()
    answer = dns.query.udp(dns.message.make_query(name, rdtype), host, port=port, timeout=2)
    return sorted(rd.to_text() for rrset in answer.answer for rd in rrset)


def dns_hook(pebble: Pebble, *args: str) -> subprocess.CompletedProcess:
    """tests/acme/dns-hook.sh as deadsfu runs it: sh -c 'CMD "$@"' deadsfu-dns-hook ARGS."""
    command = f"{DNS_HOOK} {pebble.challtestsrv_url()}"
    return subprocess.run(["sh", "-c", f'{command} "$@"', "deadsfu-dns-hook", *args],
                          capture_output=True, text=True, timeout=20)  # fmt: skip


def wait_orders(pebble: Pebble, count: int, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while pebble.orders() != count:
        assert time.monotonic() < deadline, f"orders() {pebble.orders()}, wanted {count}"
        time.sleep(0.02)


def test_pebble_harness(tmp_path):
    """Directory, issuing root, DNS records and TXT via the hook, order counting, restart."""
    http_port, tls_port = two_free_ports(NODE_IP)
    with Pebble(tmp_path / "pebble", http_port, tls_port, default_ipv4=NODE_IP) as pebble:
        try:
            order_url = place_order(pebble.directory_url(), pebble.listener_ca_path(), DOMAIN)
            assert "/my-order/" in order_url, order_url
            wait_orders(pebble, 1)
            root = x509.load_pem_x509_certificate(pebble.issuing_root_pem().encode())
            assert "Pebble Root CA" in root.subject.rfc4514_string(), root.subject

            assert lookup(pebble, DOMAIN, "A") == [NODE_IP]
            pebble.add_a("node3.sfu.test", "127.0.0.3")
            assert lookup(pebble, "node3.sfu.test", "A") == ["127.0.0.3"]
            pebble.set_default_ipv4("127.0.0.4")
            assert lookup(pebble, "other.test", "A") == ["127.0.0.4"]
            pebble.set_txt("_acme-challenge.direct.test", "v1")
            assert lookup(pebble, "_acme-challenge.direct.test", "TXT") == ['"v1"']
            pebble.clear_txt("_acme-challenge.direct.test")
            assert lookup(pebble, "_acme-challenge.direct.test", "TXT") == []

            name, value = f"_acme-challenge.{DOMAIN}", "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"
            done = dns_hook(pebble, "set", name, value)
            assert (done.returncode, done.stdout, done.stderr) == (0, "", ""), done
            assert lookup(pebble, name, "TXT") == [f'"{value}"']
            done = dns_hook(pebble, "clear", name, value)
            assert done.returncode == 0, done
            assert lookup(pebble, name, "TXT") == []
            done = dns_hook(pebble, "set", 'bad"name', value)
            assert done.returncode == 2 and value not in done.stderr, done

            pebble.restart()
            assert x509.load_pem_x509_certificate(pebble.issuing_root_pem().encode()) != root
            assert lookup(pebble, "node3.sfu.test", "A") == ["127.0.0.3"]
            place_order(pebble.directory_url(), pebble.listener_ca_path(), DOMAIN)
            wait_orders(pebble, 2)
        except BaseException:
            print(pebble.diagnostics())
            raise


# --- deadsfu over HTTPS -----------------------------------------------------------------


async def wait_certified(sfu: interop.Sfu, trace: interop.Trace, timeout: float):
    """Polls GET /healthz over HTTPS until it answers 200 with a certificate that verifies
    against the trusted root (sfu.https) for the name."""
    url = sfu.url("/healthz")
    started = time.monotonic()
    last = "no attempt"
    while True:
        if sfu.proc.poll() is not None:
            raise AssertionError(f"deadsfu exited ({sfu.proc.returncode}) before serving HTTPS")
        try:
            status, _, body = await interop.http("GET", url, https=sfu.https)
            if status == 200:
                trace.add(f"GET {url} -> 200 after {time.monotonic() - started:.1f}s", body)
                return
            last = f"answered {status}: {body[:200]}"
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
            last = f"{type(e).__name__}: {e}"
        if time.monotonic() - started > timeout:
            raise AssertionError(
                f"{url} not served with a certificate from the trusted root within {timeout}s; "
                f"last attempt: {last}"
            )
        await asyncio.sleep(0.25)


def https_sfu(binary, tmp_path, http_port: int, tls_port: int, tls_args: list,
              trusted: ssl.SSLContext) -> interop.Sfu:  # fmt: skip
    """deadsfu serving HTTPS on NODE_IP:tls_port (and HTTP on http_port), reached as
    https://DOMAIN:tls_port trusting `trusted`; returns once the process is started."""
    args = [
        "serve",
        "--http", f"{NODE_IP}:{http_port}",
        "--https", f"{NODE_IP}:{tls_port}",
        "--udp-port", "0",
        "--workers", "1",
        "--ice-candidate-host", "127.0.0.1",
        "--ftl-listen", "",
        *tls_args,
    ]  # fmt: skip
    return interop.Sfu(
        binary, tmp_path / "deadsfu.log", args=args, base=f"https://{DOMAIN}:{tls_port}",
        https=interop.Https(trusted, {DOMAIN: NODE_IP}), wait_banner=False,
    )  # fmt: skip


async def certify_then_stream(sfu, pebble, trace, created_decoders: list):
    await wait_certified(sfu, trace, ACME_TIMEOUT)
    assert pebble.orders() >= 1, "HTTPS works, yet pebble received no order"
    await interop.publish_and_watch(sfu, "video/H264", trace, created_decoders, room="https-room")


@pytest.mark.parametrize("challenge", ["tls-alpn-01", "http-01"])
def test_https_whip_whep_with_acme_certificate(tmp_path, decoders, monkeypatch, challenge):  # noqa: F811
    """deadsfu, started with an empty data dir, orders sfu.test from pebble (TLS-ALPN-01 on its
    HTTPS port, or HTTP-01 on its HTTP port: pebble's tlsPort and httpPort are those ports, and
    challtestsrv resolves sfu.test to NODE_IP), serves the certificate within ACME_TIMEOUT, then
    carries H264 from WHIP to WHEP."""
    binary = interop.deadsfu_binary()
    interop.loopback_only_ice(monkeypatch)
    http_port, tls_port = two_free_ports(NODE_IP)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    trace = interop.Trace()
    with Pebble(tmp_path / "pebble", http_port, tls_port, default_ipv4=NODE_IP) as pebble:
        acme = [
            "--data-dir", str(data_dir),
            "--acme-domain", DOMAIN,
            "--acme-email", f"t@{DOMAIN}",
            "--acme-directory", pebble.directory_url(),
            "--acme-ca-root", pebble.listener_ca_path(),
            "--acme-challenge", challenge,
        ]  # fmt: skip
        trusted = ssl.create_default_context(cadata=pebble.issuing_root_pem())
        sfu = https_sfu(binary, tmp_path, http_port, tls_port, acme, trusted)
        try:
            interop.run_test(
                certify_then_stream(sfu, pebble, trace, decoders), trace,
                ACME_TIMEOUT + interop.TEST_TIMEOUT, sfu, pebble,
            )  # fmt: skip
        finally:
            sfu.stop()


def test_https_whip_whep_with_certificate_files(tmp_path, decoders, monkeypatch):  # noqa: F811
    """The same peers over HTTPS with a certificate from files (--tls-cert/--tls-key) made by a
    test CA: the WHIP/WHEP client side of HTTPS, without ACME."""
    binary = interop.deadsfu_binary()
    interop.loopback_only_ice(monkeypatch)
    http_port, tls_port = two_free_ports(NODE_IP)
    ca = trustme.CA()
    leaf = ca.issue_cert(DOMAIN)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf.private_key_pem.write_to_path(str(key))
    with open(cert, "wb") as f:
        f.write(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
    trusted = ssl.create_default_context(cadata=ca.cert_pem.bytes().decode())
    files = ["--tls-cert", str(cert), "--tls-key", str(key)]
    sfu = https_sfu(binary, tmp_path, http_port, tls_port, files, trusted)
    trace = interop.Trace()

    async def stream():
        await wait_certified(sfu, trace, interop.CONNECT_TIMEOUT)
        await interop.publish_and_watch(sfu, "video/H264", trace, decoders, room="https-room")

    try:
        interop.run_test(stream(), trace, interop.TEST_TIMEOUT, sfu)
    finally:
        sfu.stop()
