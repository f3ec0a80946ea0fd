"""Test ACME CA for the interop tests: Debian's `pebble` and `pebble-challtestsrv` (its DNS) on
free loopback ports; the Python twin of tests/common/pebble.rs.

Pebble's own HTTPS listener (directory and management API) uses a certificate made here with
trustme (`listener_ca_path()` is its CA, what deadsfu gets as --acme-ca-root). The certificates
pebble issues chain to a root it makes anew at every start (`issuing_root_pem()`).
challtestsrv answers every A query with `default_ipv4` unless told otherwise (`add_a`), and
pebble validates challenges on that address at `http_port` (HTTP-01) or `tls_port`
(TLS-ALPN-01).

    with Pebble(tmp_path / "pebble", http_port=hp, tls_port=tp, default_ipv4="127.0.0.2") as p:
        p.directory_url(), p.listener_ca_path(), p.issuing_root_pem(), p.orders()
"""

import collections
import json
import os
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request

import trustme

READY_TIMEOUT = 20.0
LOG_TAIL = 80
# What pebble 2.4 logs for each new order: `Pebble <date> <time> Added order "<id>" to the db`.
ORDER_LINE = 'Added order "'
DEFAULT_ENV = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"}


def free_tcp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_udp_and_tcp_port() -> int:
    """A port on 127.0.0.1 free for both UDP and TCP (challtestsrv's DNS serves both)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for both UDP and TCP")


def fqdn(name: str) -> str:
    return name.rstrip(".") + "."


class Pebble:
    """challtestsrv + pebble, started by the constructor, stopped by close() (or `with`).

    `env` is applied over DEFAULT_ENV, e.g. {"PEBBLE_VA_NOSLEEP": "0",
    "PEBBLE_VA_SLEEPTIME": "3"} for slow validations."""

    def __init__(self, workdir, http_port: int, tls_port: int,
                 default_ipv4: str = "127.0.0.1", env: dict | None = None):  # fmt: skip
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.env = {**os.environ, **DEFAULT_ENV, **(env or {})}
        self.tail = collections.deque(maxlen=LOG_TAIL)
        self.order_count = 0
        self._lock = threading.Lock()
        self._log_file = open(os.path.join(workdir, "pebble.log"), "w", encoding="utf-8")
        self._readers = []
        self.pebble = None
        self.challtestsrv = None

        ca = trustme.CA()
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        self._ca_path = os.path.join(workdir, "listener-ca.pem")
        ca.cert_pem.write_to_path(self._ca_path)
        leaf.cert_chain_pems[0].write_to_path(os.path.join(workdir, "listener.pem"))
        leaf.private_key_pem.write_to_path(os.path.join(workdir, "listener.key"))
        self.ssl_context = ssl.create_default_context(cafile=self._ca_path)
        # Never through a proxy from the environment; HTTPS trusting the listener CA only.
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}),
            urllib.request.HTTPSHandler(context=self.ssl_context),
        )

        ports = set()
        while len(ports) < 3:
            ports.add(free_tcp_port())
        self.acme_port, self.mgmt_port, self.challtestsrv_port = sorted(ports)
        self.dns_port = free_udp_and_tcp_port()
        self._config = os.path.join(workdir, "pebble.json")
        with open(self._config, "w", encoding="utf-8") as f:
            json.dump({"pebble": {
                "listenAddress": f"127.0.0.1:{self.acme_port}",
                "managementListenAddress": f"127.0.0.1:{self.mgmt_port}",
                "certificate": os.path.join(workdir, "listener.pem"),
                "privateKey": os.path.join(workdir, "listener.key"),
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": False,
            }}, f)  # fmt: skip
        try:
            self.challtestsrv = self._spawn("challtestsrv", [
                "pebble-challtestsrv",
                f"-management=127.0.0.1:{self.challtestsrv_port}",
                f"-dns01=127.0.0.1:{self.dns_port}",
                "-http01=", "-https01=", "-tlsalpn01=",
                f"-defaultIPv4={default_ipv4}", "-defaultIPv6=",
            ])  # fmt: skip
            self._wait_for("challtestsrv", self.challtestsrv_url())
            self.restart()
        except BaseException:
            self.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- what tests use -------------------------------------------------------------------

    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.acme_port}/dir"

    def listener_ca_path(self) -> str:
        """PEM of the CA of pebble's own HTTPS listener, for --acme-ca-root."""
        return self._ca_path

    def dns_server(self) -> tuple[str, int]:
        return ("127.0.0.1", self.dns_port)

    def challtestsrv_url(self) -> str:
        """Management API base URL (e.g. for tests/acme/dns-hook.sh)."""
        return f"http://127.0.0.1:{self.challtestsrv_port}"

    def issuing_root_pem(self) -> str:
        """The root that the running pebble's certificates chain to (new at every start)."""
        url = f"https://127.0.0.1:{self.mgmt_port}/roots/0"
        status, body = self._request(url)
        if status != 200:
            raise AssertionError(f"GET {url} answered {status}: {body}\n" + self.diagnostics())
        return body

    def add_a(self, host: str, ip: str):
        self._manage("/add-a", {"host": fqdn(host), "addresses": [ip]})

    def clear_a(self, host: str):
        self._manage("/clear-a", {"host": fqdn(host)})

    def set_default_ipv4(self, ip: str):
        self._manage("/set-default-ipv4", {"ip": ip})

    def set_txt(self, name: str, value: str):
        """e.g. set_txt("_acme-challenge.sfu.test", value)"""
        self._manage("/set-txt", {"host": fqdn(name), "value": value})

    def clear_txt(self, name: str):
        self._manage("/clear-txt", {"host": fqdn(name)})

    def orders(self) -> int:
        """New orders since start (across restarts). A line reaches the log a moment after
        pebble answered the request: poll with a deadline to see a just-placed order."""
        with self._lock:
            return self.order_count

    def stop(self):
        """Stops pebble; challtestsrv and its records stay."""
        if self.pebble is not None:
            self._end(self.pebble)
            self.pebble = None
            self._log("pebble", "--- stopped ---")

    def restart(self):
        """(Re)starts pebble on the same ports with the same listener certificate; the new
        pebble has a new issuing root and no accounts, orders or authorizations."""
        self.stop()
        self.pebble = self._spawn("pebble", [
            "pebble", "-config", self._config,
            "-dnsserver", f"127.0.0.1:{self.dns_port}", "-strict=false",
        ])  # fmt: skip
        self._wait_for("pebble's directory", self.directory_url())

    def diagnostics(self) -> str:
        with self._lock:
            tail = list(self.tail)
        return (
            f"--- pebble / challtestsrv output, last {len(tail)} lines "
            f"(full log: {self._log_file.name}) ---\n" + "\n".join(tail)
        )

    log = diagnostics

    def close(self):
        self.stop()
        if self.challtestsrv is not None:
            self._end(self.challtestsrv)
            self.challtestsrv = None
        for reader in self._readers:
            reader.join(timeout=2)
        with self._lock:
            self._log_file.close()

    # --- internals ------------------------------------------------------------------------

    def _spawn(self, name: str, command: list) -> subprocess.Popen:
        proc = subprocess.Popen(
            command, env=self.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        reader = threading.Thread(target=self._read, args=(proc, name), daemon=True)
        reader.start()
        self._readers.append(reader)
        return proc

    def _read(self, proc, name: str):
        for raw in proc.stdout:
            self._log(name, raw.decode("utf-8", "replace").rstrip("\n"))

    def _log(self, name: str, line: str):
        with self._lock:
            if name == "pebble" and ORDER_LINE in line:
                self.order_count += 1
            self.tail.append(f"{name}: {line}")
            if not self._log_file.closed:
                self._log_file.write(f"{name}: {line}\n")
                self._log_file.flush()

    @staticmethod
    def _end(proc):
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)

    def _request(self, url: str, body: dict | None = None) -> tuple[int, str]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data)
        try:
            with self._opener.open(req, timeout=5) as res:
                return res.status, res.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode("utf-8", "replace")

    def _manage(self, path: str, body: dict):
        status, text = self._request(self.challtestsrv_url() + path, body)
        if status != 200:
            raise AssertionError(
                f"challtestsrv {path} {body} answered {status}: {text}\n" + self.diagnostics()
            )

    def _wait_for(self, what: str, url: str):
        """Polls `url` until any HTTP answer; fails if a process exits or at the deadline."""
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                self._request(url)
                return
            except (urllib.error.URLError, OSError) as e:
                error = e
            for proc in (self.challtestsrv, self.pebble):
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(
                        f"waiting for {what}: {proc.args[0]} exited ({proc.returncode})\n"
                        + self.diagnostics()
                    )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{what}: no answer within {READY_TIMEOUT}s ({error})\n" + self.diagnostics()
                )
            time.sleep(0.05)
