"""A real two-node deadsfu cluster on loopback for the Python tests (interop and browser):
`deadsfu cluster init`, a TLS redis-server, the bootstrap server (`deadsfu cluster serve`),
one sfu bundle per node, and `deadsfu serve` nodes on their own loopback addresses, all behind
one service hostname. The Python twin of what tests/cluster_mode.rs does with the binary.

    nodes = TwoNodes(binary, workdir, ["--bearer-token", "T"])  # A and B, both serving
    try:
        nodes.a.public_url, nodes.b.ip, nodes.port, nodes.certs.ca_path, nodes.hosts(nodes.b)
        nodes.cluster.status(), nodes.cluster.wait_room_owner("room", "sfu-a")
    finally:
        nodes.close()

or by parts: Cluster(binary, workdir), cluster.start_node(...), cluster.wait_serving(...).

Names and addresses (nothing leaves 127.0.0.0/8):
  svc.test     the service name, served by every node (its certificate is every node's)
  sfu-a.test   node A on 127.0.0.2, sfu-b.test node B on 127.0.0.3, the same HTTPS port on both
  Redis, the bootstrap server and FTL on 127.0.0.1 / the node's own address.

Every process's output is kept in a log file under the work dir, with its tail in memory for
the failure message (`Cluster.diagnostics()`). `Cluster.close()` kills everything it started.
"""

import base64
import collections
import hashlib
import http.client
import os
import queue
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

SERVICE = "svc.test"
NODE_A, NODE_B = "sfu-a", "sfu-b"
NODE_A_IP, NODE_B_IP = "127.0.0.2", "127.0.0.3"
START_TIMEOUT = 20.0  # each process: from spawn to ready
JOIN_TIMEOUT = 20.0  # nodes: from spawn to "serving" in cluster status
# Each node re-reads node records from Redis once a second (crates/node/src/front_door.rs,
# SNAPSHOT_EVERY) and redirects only to nodes it has read.
SNAPSHOT_EVERY = 1.0
LOG_TAIL = 120
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def hostname_of(node_id: str) -> str:
    return f"{node_id}.test"


def free_port_on(*hosts: str) -> int:
    """A TCP port free on every one of `hosts` at once (nodes share one HTTPS port number)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as first:
            first.bind((hosts[0], 0))
            port = first.getsockname()[1]
            held = []
            try:
                for host in hosts[1:]:
                    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    held.append(s)
                    s.bind((host, port))
                return port
            except OSError:
                continue
            finally:
                for s in held:
                    s.close()
    raise RuntimeError(f"no TCP port free on all of {hosts}")


# --- certificates -----------------------------------------------------------------------


class TestCerts:
    """A test CA and one leaf certificate for `names`, written as PEM files."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory, names):
        os.makedirs(directory, exist_ok=True)
        self.ca = trustme.CA()
        leaf = self.ca.issue_cert(*names)
        self.ca_path = os.path.join(directory, "test-ca.pem")
        self.cert_path = os.path.join(directory, "node-cert.pem")
        self.key_path = os.path.join(directory, "node-key.pem")
        self.ca.cert_pem.write_to_path(self.ca_path)
        leaf.private_key_pem.write_to_path(self.key_path)
        with open(self.cert_path, "wb") as f:
            f.write(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
        cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
        spki = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        # For Chromium's --ignore-certificate-errors-spki-list: accept this leaf's key only.
        self.leaf_spki_sha256 = base64.b64encode(hashlib.sha256(spki).digest()).decode()

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_path)


# --- HTTPS with host names mapped to loopback addresses ------------------------------------


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """Connects to `ip` whatever the URL's host, with SNI and verification for the host."""

    def __init__(self, host, port, ip, context, timeout):
        super().__init__(host, port, context=context, timeout=timeout)
        self._ip = ip
        self._tls = context

    def connect(self):
        sock = socket.create_connection((self._ip, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)


def https_request(method: str, url: str, hosts: dict, context: ssl.SSLContext,
                  body: bytes | None = None, headers=None, timeout: float = 10.0):  # fmt: skip
    """One HTTPS request, never following redirects: (status, headers with lower-case names,
    body text). `hosts` maps each host name to the loopback address to connect to."""
    u = urllib.parse.urlsplit(url)
    if u.scheme != "https" or u.hostname not in hosts:
        raise ValueError(f"{url}: only https:// to one of {sorted(hosts)}")
    conn = _PinnedHTTPSConnection(u.hostname, u.port or 443, hosts[u.hostname], context, timeout)
    try:
        path = u.path or "/"
        if u.query:
            path += "?" + u.query
        conn.request(method, path, body=body, headers=headers or {})
        res = conn.getresponse()
        text = res.read().decode("utf-8", "replace")
        return res.status, {k.lower(): v for k, v in res.getheaders()}, text
    finally:
        conn.close()


# --- processes ------------------------------------------------------------------------------


class Process:
    """A child process whose output (stdout and stderr, merged) goes to `log_path`, with its
    last lines kept for diagnostics; `wait_line` waits for a line containing a text."""

    def __init__(self, label: str, command: list, log_path, env=None):
        self.label = label
        self.command = command
        self.log_path = str(log_path)
        self.tail = collections.deque(maxlen=LOG_TAIL)
        self._lock = threading.Lock()
        self._lines = queue.Queue()
        self._log = open(self.log_path, "w", encoding="utf-8")
        full_env = dict(os.environ)
        full_env.setdefault("RUST_LOG", "info")
        full_env["NO_COLOR"] = "1"
        full_env.pop("DEADSFU_CLUSTER_URL", None)
        full_env.pop("DEADSFU_CLUSTER_URL_FILE", None)
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, env=full_env,
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for raw in self.proc.stdout:
            line = ANSI_ESCAPE.sub("", raw.decode("utf-8", "replace").rstrip("\n"))
            with self._lock:
                self.tail.append(line)
                if not self._log.closed:
                    self._log.write(line + "\n")
                    self._log.flush()
            self._lines.put(line)
        self._lines.put(None)

    def wait_line(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(deadline - time.monotonic(), 0.001))
            except queue.Empty:
                raise RuntimeError(
                    f"{self.label}: no line with {text!r} within {timeout}s\n" + self.diagnostics()
                ) from None
            if line is None:
                self.proc.wait(timeout=5)
                raise RuntimeError(
                    f"{self.label} exited ({self.proc.returncode}) before printing {text!r}\n"
                    + self.diagnostics()
                )
            if text in line:
                return line

    def log_text(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def running(self) -> bool:
        return self.proc.poll() is None

    def diagnostics(self) -> str:
        with self._lock:
            tail = list(self.tail)
        code = self.proc.poll()
        state = "running" if code is None else f"exited with status {code}"
        return (
            f"--- {self.label} ({state}), last {len(tail)} lines (full log: {self.log_path})\n"
            f"    {' '.join(map(str, self.command))}\n" + "\n".join(tail)
        )

    def stop(self, sig=signal.SIGKILL):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._reader.join(timeout=2)
        with self._lock:
            self._log.close()


class Node(Process):
    """One `deadsfu serve` of the cluster: `name` is its node id, reached as
    https://{name}.test:{https_port} at `ip`."""

    def __init__(self, name, ip, https_port, command, log_path, env, ftl_port=None):
        super().__init__(f"node {name}", command, log_path, env)
        self.name = name
        self.ip = ip
        self.https_port = https_port
        self.hostname = hostname_of(name)
        self.public_url = f"https://{self.hostname}:{https_port}"
        self.ftl_port = ftl_port

    def url(self, path: str, host: str | None = None) -> str:
        return f"https://{host or self.hostname}:{self.https_port}{path}"


class Cluster:
    """Cluster directory, Redis, bootstrap server, and the nodes started with start_node()."""

    def __init__(self, binary: str, workdir):
        self.binary = binary
        self.workdir = str(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.dir = os.path.join(self.workdir, "cluster")
        self.processes: list[Process] = []
        self.nodes: list[Node] = []
        redis_port = free_port_on("127.0.0.1")
        boot_port = free_port_on("127.0.0.1")
        while boot_port == redis_port:
            boot_port = free_port_on("127.0.0.1")
        try:
            self.run(["cluster", "init", "--dir", self.dir,
                      "--redis-addr", f"127.0.0.1:{redis_port}",
                      "--bootstrap-addr", f"127.0.0.1:{boot_port}"], "init")  # fmt: skip
            conf = os.path.join(self.dir, "redis", "redis.conf")
            redis = self.spawn("redis", ["redis-server", conf])
            redis.wait_line("Ready to accept connections", START_TIMEOUT)
            # The bootstrap server runs from the directory without the CA key.
            boot = self.spawn("bootstrap", [binary, "cluster", "serve", "--dir",
                                            os.path.join(self.dir, "bootstrap")])
            boot.wait_line("bootstrap server listening", START_TIMEOUT)
            self.admin_url = self.issue("admin", "ops")
        except BaseException:
            self.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def spawn(self, label, command, env=None) -> Process:
        p = Process(label, command, os.path.join(self.workdir, f"{label}.log"), env)
        self.processes.append(p)
        return p

    def run(self, args: list, label: str, env=None, timeout: float = 30.0) -> str:
        """Runs `deadsfu ARGS` to completion; its stdout (stderr goes to LABEL.log)."""
        log = os.path.join(self.workdir, f"{label}.log")
        full_env = {k: v for k, v in os.environ.items()
                    if k not in ("DEADSFU_CLUSTER_URL", "DEADSFU_CLUSTER_URL_FILE")}  # fmt: skip
        full_env.update({"NO_COLOR": "1", "RUST_LOG": full_env.get("RUST_LOG", "info")})
        full_env.update(env or {})
        with open(log, "a", encoding="utf-8") as err:
            done = subprocess.run([self.binary, *args], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=err, env=full_env,
                                  timeout=timeout)  # fmt: skip
        out = done.stdout.decode("utf-8", "replace")
        if done.returncode != 0:
            with open(log, encoding="utf-8", errors="replace") as f:
                raise RuntimeError(
                    f"deadsfu {args[:2]} failed ({done.returncode}):\n{out}\n{f.read()}"
                )
        return out

    def issue(self, role: str, name: str, hostname: str | None = None) -> str:
        """A bundle URL (the last line `cluster issue` prints)."""
        args = ["cluster", "issue", "--dir", self.dir, "--role", role, "--name", name]
        if hostname:
            args += ["--hostname", hostname]
        url = self.run(args, f"issue-{name}").strip().splitlines()[-1]
        assert url.startswith("https://") and "#sha256=" in url, f"bundle URL {url!r}"
        return url

    def admin(self, args: list, label: str = "admin") -> str:
        """`deadsfu cluster ARGS` as the operator (admin bundle)."""
        return self.run(["cluster", *args], label, env={"DEADSFU_CLUSTER_URL": self.admin_url})

    def status(self) -> str:
        return self.admin(["status"], "status")

    def start_node(self, name: str, ip: str, https_port: int, certs: TestCerts,
                   extra_args=(), ftl: bool = False) -> Node:  # fmt: skip
        """`deadsfu serve` for node `name` (bundle issued here for {name}.test) on `ip`, with
        the certificate files of `certs` and the service name SERVICE; returns once it prints
        its banner. With `ftl`, FTL on ip:a free port (UDP media on an ephemeral port)."""
        url = self.issue("sfu", name, hostname_of(name))
        ftl_port = free_port_on(ip) if ftl else None
        command = [
            self.binary, "serve",
            "--http", f"{ip}:{free_port_on(ip)}",
            "--https", f"{ip}:{https_port}",
            "--udp-port", "0",
            "--workers", "1",
            "--ice-candidate-host", "127.0.0.1",
            "--ftl-listen", f"{ip}:{ftl_port}" if ftl else "",
            *(["--ftl-udp-port", "0"] if ftl else []),
            "--tls-cert", certs.cert_path,
            "--tls-key", certs.key_path,
            "--hostname", hostname_of(name),
            "--node-id", name,
            "--service-domain", SERVICE,
            "--public-url", f"https://{hostname_of(name)}:{https_port}",
            *extra_args,
        ]  # fmt: skip
        node = Node(name, ip, https_port, command, os.path.join(self.workdir, f"node-{name}.log"),
                    {"DEADSFU_CLUSTER_URL": url}, ftl_port)  # fmt: skip
        self.processes.append(node)
        self.nodes.append(node)
        node.wait_line("listening on", START_TIMEOUT)
        return node

    def wait_serving(self, nodes: list, certs: TestCerts, timeout: float = JOIN_TIMEOUT):
        """Until every node answers /readyz 200 over HTTPS on its own name and `cluster status`
        lists them all serving; then one more snapshot period, so that each node has read
        the others' records (it redirects only to nodes it has read)."""
        deadline = time.monotonic() + timeout
        context = certs.ssl_context()
        last = ""
        for node in nodes:
            while True:
                if not node.running():
                    raise RuntimeError(f"{node.label} exited\n" + self.diagnostics())
                try:
                    status, _, body = https_request(
                        "GET", node.url("/readyz"), {node.hostname: node.ip}, context, timeout=2
                    )
                    if status == 200:
                        break
                    last = f"/readyz {status} {body}"
                except OSError as e:
                    last = f"/readyz: {e}"
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{node.label} not ready in {timeout}s ({last})\n"
                                       + self.diagnostics())  # fmt: skip
                time.sleep(0.1)
        while True:
            text = self.status()
            serving = {
                line.split()[0] for line in text.splitlines()
                if len(line.split()) > 3 and line.split()[3] == "serving"
            }  # fmt: skip
            if all(n.name in serving for n in nodes):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"nodes not all serving in {timeout}s:\n{text}\n"
                                   + self.diagnostics())  # fmt: skip
            time.sleep(0.2)
        # Not a synchronisation on an event: the snapshot is re-read on a timer.
        time.sleep(SNAPSHOT_EVERY * 1.5)

    def room_owner(self, room: str) -> str | None:
        """The owner `cluster status` shows for `room` (its node id), or None."""
        for line in self.status().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == room:
                return parts[1]
        return None

    def wait_room_owner(self, room: str, owner: str, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while True:
            seen = self.room_owner(room)
            if seen is not None and seen.split("~")[0] == owner:
                return seen
            if time.monotonic() > deadline:
                raise AssertionError(f"room {room}: owner {seen!r} in cluster status, wanted "
                                     f"{owner}\n{self.status()}")  # fmt: skip
            time.sleep(0.2)

    def diagnostics(self) -> str:
        return "\n".join(p.diagnostics() for p in self.processes)

    def close(self):
        for p in reversed(self.processes):
            p.stop()


class TwoNodes:
    """The usual test cluster: nodes A (sfu-a.test, NODE_A_IP) and B (sfu-b.test, NODE_B_IP)
    on one HTTPS port number, one certificate for SERVICE and both node names, both serving.
    `node_args` go to both nodes; with `ftl_on_a`, node A also takes FTL."""

    def __init__(self, binary, workdir, node_args=(), ftl_on_a=False):
        workdir = str(workdir)
        self.certs = TestCerts(os.path.join(workdir, "certs"),
                               [SERVICE, hostname_of(NODE_A), hostname_of(NODE_B)])  # fmt: skip
        self.context = self.certs.ssl_context()
        self.port = free_port_on(NODE_A_IP, NODE_B_IP)
        self.cluster = Cluster(binary, workdir)
        try:
            self.a = self.cluster.start_node(NODE_A, NODE_A_IP, self.port, self.certs, node_args,
                                             ftl=ftl_on_a)  # fmt: skip
            self.b = self.cluster.start_node(NODE_B, NODE_B_IP, self.port, self.certs, node_args)
            self.cluster.wait_serving([self.a, self.b], self.certs)
        except BaseException:
            print(self.cluster.diagnostics())
            self.cluster.close()
            raise

    def hosts(self, entry: Node) -> dict:
        """The resolver of a client that reaches SERVICE at `entry`."""
        return {SERVICE: entry.ip, self.a.hostname: self.a.ip, self.b.hostname: self.b.ip}

    def service_url(self, path: str) -> str:
        return f"https://{SERVICE}:{self.port}{path}"

    def diagnostics(self) -> str:
        return self.cluster.diagnostics()

    def close(self):
        self.cluster.close()


# --- FTL -------------------------------------------------------------------------------------


def make_ftl_media(directory, width: int, height: int, seconds: int = 4, gop: int = 30,
                   timeout: float = 30.0):  # fmt: skip
    """H264 constrained baseline (Annex-B) and Opus (Ogg) files as `deadsfu ftl-push` reads."""
    ffmpeg = os.environ.get("FFMPEG", "ffmpeg")
    video, audio = os.path.join(directory, "ftl.h264"), os.path.join(directory, "ftl.ogg")
    for command in (
        [ffmpeg, "-y", "-loglevel", "error", "-f", "lavfi",
         "-i", f"testsrc=size={width}x{height}:rate=30", "-t", str(seconds),
         "-c:v", "libx264", "-profile:v", "baseline", "-bf", "0", "-g", str(gop),
         "-keyint_min", str(gop), "-sc_threshold", "0", "-pix_fmt", "yuv420p", "-f", "h264", video],
        [ffmpeg, "-y", "-loglevel", "error", "-f", "lavfi",
         "-i", "sine=frequency=440:sample_rate=48000", "-t", str(seconds),
         "-c:a", "libopus", "-b:a", "64k", "-f", "ogg", audio],
    ):  # fmt: skip
        done = subprocess.run(command, capture_output=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)}: {done.stderr.decode('utf-8', 'replace')}")
    return video, audio


def ftl_push(cluster: Cluster, node: Node, key: str, video, audio) -> Process:
    """`deadsfu ftl-push --loop` to the node's FTL port; returns once it is streaming (the
    node accepted the key and took the channel's room)."""
    env = {
        "RUST_LOG": os.environ.get("RUST_LOG", "info") + ",deadsfu_ftl::net::client=debug",
        "DEADSFU_FTL_KEY": key,
    }
    p = cluster.spawn("ftl-push", [
        cluster.binary, "ftl-push", "--server", f"{node.ip}:{node.ftl_port}",
        "--video", str(video), "--audio", str(audio), "--loop",
    ], env)  # fmt: skip
    p.wait_line("FTL streaming", START_TIMEOUT)
    return p
