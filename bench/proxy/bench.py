#!/usr/bin/env python3
"""The front-line proxy benchmark driver (run through bench/proxy/run, which builds first).

One run, one machine, one backend, four paths to it: direct, `deadsfu proxy`, HAProxy
(`mode tcp`, `req.ssl_sni`) and nginx (`ssl_preread`). Measures
  1. new TLS connections per second, one `GET /healthz` each (closed loop),
  2. the latency of such connections at a fixed rate, half of HAProxy's maximum (open loop),
  3. bulk MB/s over one TLS connection,
  4. the FTL relay: packets per second per core of `deadsfu proxy`, and added latency,
and writes the "Front-line proxy" section of BENCHMARKS.md and bench/proxy/results.json.

The cluster is set up as the integration tests do (tests/common/cluster.rs): `deadsfu cluster
init`, a TLS redis-server, `deadsfu cluster serve`, bundles issued per role, one SFU with a test
certificate, on 127.0.0.x. See bench/README.md ("Front-line proxy").
"""

import argparse
import datetime
import json
import os
import platform
import pwd
import re
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.join(ROOT, "bench", "proxy")
RESULTS = os.path.join(HERE, "results.json")
NOTES = os.path.join(HERE, "NOTES.md")
HEADING = "## Front-line proxy"

# The proxy under test runs alone on PROXY_CPU; everything else (SFU, bulk server, Redis, the
# load generator, the FTL ingest and pusher) on WORK_CPU.
PROXY_CPU = "0"
WORK_CPU = "1"

SFU_IP = "127.0.0.2"
BULK_IP = "127.0.0.3"
INGEST_IP = "127.0.0.4"
DEADSFU_PROXY_IP = "127.0.0.10"
HAPROXY_IP = "127.0.0.11"
NGINX_IP = "127.0.0.12"
CLIENT_IP = "127.0.0.20"
# deadsfu proxy and HAProxy connect to the backends from the loopback's primary address, and
# the backends want a PROXY v2 header from it; nginx connects from NGINX_IP, without one.
PROXY_SOURCE = "127.0.0.1"

SFU_NAME = "sfu-a.test"
BULK_NAME = "bulk.test"
SERVICE = "svc.test"
PATHS = ["direct", "deadsfu", "haproxy", "nginx"]
LABEL = {"direct": "direct", "deadsfu": "deadsfu proxy", "haproxy": "HAProxy",
         "nginx": "nginx"}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def free_port(ip):
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def machine_busy_secs():
    """CPU time the whole machine spent busy (user, nice, system, softirq), all cores."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[6]) / os.sysconf("SC_CLK_TCK")


def own_secs():
    """CPU time of this driver and every process it started and waited for (the servers, the
    proxies and their children, the load tools, perf)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    return total


class Procs:
    """Processes this run started; each is stopped by its own pid at the end."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.list = []

    def start(self, name, cmd, cpu, env=None, stdout=subprocess.DEVNULL):
        logf = open(os.path.join(self.workdir, f"{name}.log"), "w")
        full = ["taskset", "-c", cpu, *cmd]
        p = subprocess.Popen(full, stdout=stdout, stderr=logf, stdin=subprocess.DEVNULL,
                             env=dict(os.environ, **(env or {})), text=True)
        p.name = name
        self.list.append(p)
        return p

    def check(self):
        for p in self.list:
            if p.poll() is not None:
                raise RuntimeError(f"{p.name} exited ({p.returncode}); see "
                                   f"{self.workdir}/{p.name}.log:\n{self.tail(p.name)}")

    def tail(self, name, lines=20):
        try:
            with open(os.path.join(self.workdir, f"{name}.log")) as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def stop_all(self):
        for p in reversed(self.list):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.list):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def make_pki(d):
    """A test CA and one ECDSA P-256 server certificate for the SFU, bulk and service names."""
    ca_key, ca_crt = f"{d}/ca.key", f"{d}/ca.crt"
    key, csr, crt, ext = f"{d}/server.key", f"{d}/server.csr", f"{d}/server.crt", f"{d}/ext.cnf"
    ec = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]
    run(["openssl", "genpkey", *ec, "-out", ca_key])
    run(["openssl", "req", "-x509", "-new", "-key", ca_key, "-sha256", "-days", "3",
         "-subj", "/CN=deadsfu proxybench test CA", "-out", ca_crt,
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    run(["openssl", "genpkey", *ec, "-out", key])
    run(["openssl", "req", "-new", "-key", key, "-subj", f"/CN={SFU_NAME}", "-out", csr])
    with open(ext, "w") as f:
        f.write(f"subjectAltName=DNS:{SFU_NAME},DNS:{BULK_NAME},DNS:{SERVICE}\n"
                "extendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"
                "keyUsage=critical,digitalSignature\n")
    run(["openssl", "x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key,
         "-CAcreateserial", "-days", "3", "-sha256", "-extfile", ext, "-out", crt])
    return ca_crt, crt, key


def tls_get(addr, sni, path, ca, timeout=3.0):
    """One HTTPS GET from CLIENT_IP; the status line (or the error)."""
    ctx = ssl.create_default_context(cafile=ca)
    try:
        with socket.create_connection(addr, timeout=timeout,
                                      source_address=(CLIENT_IP, 0)) as s:
            with ctx.wrap_socket(s, server_hostname=sni) as t:
                t.sendall(f"GET {path} HTTP/1.1\r\nHost: {sni}\r\n"
                          "Connection: close\r\n\r\n".encode())
                data = b""
                while len(data) < 256:
                    chunk = t.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                return data.split(b"\r\n", 1)[0].decode(errors="replace")
    except (OSError, ssl.SSLError) as e:
        return f"error: {e}"


def wait_for(what, check, procs, timeout=30.0):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        procs.check()
        ok, last = check()
        if ok:
            return
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}: {last}")


def children(pid):
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if int(stat[stat.rfind(")") + 2:].split()[1]) == pid:
            out.append(int(entry))
    return out


class Setup:
    """The cluster, the SFU, the bulk server and the three proxies."""

    def __init__(self, args):
        self.bins = args.bin
        self.dir = tempfile.mkdtemp(prefix="deadsfu-proxybench-")
        self.procs = Procs(self.dir)
        self.keep = args.keep

    def deadsfu(self, *a):
        return [f"{self.bins}/deadsfu", *a]

    def bench(self, *a):
        return [f"{self.bins}/deadsfu-proxybench", *a]

    def start(self):
        d = self.dir
        log(f"set-up in {d}")
        self.ca, self.crt, self.key = make_pki(d)
        cdir = f"{d}/cluster"
        env_clean = {"DEADSFU_CLUSTER_URL": "", "RUST_LOG": "warn"}
        run(self.deadsfu("cluster", "init", "--dir", cdir,
                         "--redis-addr", f"127.0.0.1:{free_port('127.0.0.1')}",
                         "--bootstrap-addr", f"127.0.0.1:{free_port('127.0.0.1')}"),
            env=dict(os.environ, **env_clean))
        self.procs.start("redis", ["redis-server", f"{cdir}/redis/redis.conf"], WORK_CPU)
        self.procs.start("bootstrap", self.deadsfu("cluster", "serve", "--dir", os.path.join(cdir, "bootstrap")), WORK_CPU,
                         env=env_clean)

        def issue(role, name, *extra):
            out = run(self.deadsfu("cluster", "issue", "--dir", cdir, "--role", role,
                                   "--name", name, *extra), env=dict(os.environ, **env_clean))
            url = out.strip().splitlines()[-1]
            assert url.startswith("https://"), out
            return url

        # Every bundle before any node starts (issuing reloads Redis's ACL).
        self.admin_url = issue("admin", "ops")
        sfu_url = issue("sfu", "sfu-a", "--hostname", SFU_NAME)
        proxy_url = issue("proxy", "px")

        # The SFU. Connections from the proxies (all from PROXY_SOURCE) carry PROXY v2.
        self.sfu_port = free_port(SFU_IP)
        self.sfu = (SFU_IP, self.sfu_port)
        self.sfu_proc = self.procs.start("sfu", self.deadsfu(
            "serve", "--http", f"{SFU_IP}:{free_port(SFU_IP)}",
            "--https", f"{SFU_IP}:{self.sfu_port}", "--udp-port", "0", "--workers", "1",
            "--ice-candidate-host", "127.0.0.1", "--ftl-listen", "",
            "--tls-cert", self.crt, "--tls-key", self.key, "--data-dir", f"{d}/sfu-data",
            "--hostname", SFU_NAME, "--node-id", "sfu-a", "--service-domain", SERVICE,
            "--public-url", f"https://{SFU_NAME}:{self.sfu_port}",
            "--proxy-protocol-from", f"{PROXY_SOURCE}/32"), WORK_CPU,
            env={"DEADSFU_CLUSTER_URL": sfu_url, "RUST_LOG": "warn"})
        wait_for("the SFU's /readyz",
                 lambda: self._status_ok(self.sfu, SFU_NAME, "/readyz"), self.procs, 60)

        # The bulk server, registered as node proxybench-bulk with host:bulk.test.
        self.bulk_proc = self.procs.start("bulk", self.bench(
            "backend", "--listen", f"{BULK_IP}:0", "--cert", self.crt, "--key", self.key,
            "--proxy-from", PROXY_SOURCE, "--hostname", BULK_NAME), WORK_CPU,
            env={"DEADSFU_CLUSTER_URL": self.admin_url}, stdout=subprocess.PIPE)
        line = self.bulk_proc.stdout.readline()
        if not line.startswith("ready "):
            raise RuntimeError(f"bulk server: {line!r}\n{self.procs.tail('bulk')}")
        host, port = line.split()[1].rsplit(":", 1)
        self.bulk = (host, int(port))

        # deadsfu proxy. Its per-IP limits (256 open, 50 new/s) would refuse a load generator
        # that is one IP: raised out of the way, as HAProxy and nginx have none by default.
        self.deadsfu_port = free_port(DEADSFU_PROXY_IP)
        self.ftl_port = free_port(DEADSFU_PROXY_IP)
        self.admin_port = free_port(DEADSFU_PROXY_IP)
        self.deadsfu_proc = self.procs.start("deadsfu-proxy", self.deadsfu(
            "proxy", "--https-listen", f"{DEADSFU_PROXY_IP}:{self.deadsfu_port}",
            "--http-listen", "", "--ftl-listen", f"{DEADSFU_PROXY_IP}:{self.ftl_port}",
            "--ftl-udp-port", "0", "--service-domain", SERVICE,
            "--admin-listen", f"{DEADSFU_PROXY_IP}:{self.admin_port}",
            "--max-connections", "100000", "--max-connections-per-ip", "100000",
            "--new-connections-per-ip", "1000000"), PROXY_CPU,
            env={"DEADSFU_CLUSTER_URL": proxy_url, "RUST_LOG": "warn"})

        # HAProxy: mode tcp, SNI from the ClientHello, one thread, PROXY v2 to the backends.
        self.haproxy_port = free_port(HAPROXY_IP)
        hcfg = f"{d}/haproxy.cfg"
        with open(hcfg, "w") as f:
            f.write(f"""global
    nbthread 1
    maxconn 8000

defaults
    mode tcp
    timeout connect 3s
    timeout client 300s
    timeout server 300s
    maxconn 8000

frontend tls
    bind {HAPROXY_IP}:{self.haproxy_port}
    tcp-request inspect-delay 5s
    tcp-request content accept if {{ req_ssl_hello_type 1 }}
    use_backend sfu if {{ req.ssl_sni -i {SFU_NAME} }}
    use_backend bulk if {{ req.ssl_sni -i {BULK_NAME} }}

backend sfu
    server sfu-a {self.sfu[0]}:{self.sfu[1]} send-proxy-v2

backend bulk
    server bulk {self.bulk[0]}:{self.bulk[1]} send-proxy-v2
""")
        self.haproxy_proc = self.procs.start("haproxy", ["haproxy", "-db", "-f", hcfg], PROXY_CPU)

        # nginx: the stream module, ssl_preread, one worker. Its stream proxy writes PROXY
        # protocol v1 only, which the SFU refuses (v2 only): it connects from its own address
        # instead, which the backends do not ask for a header.
        self.nginx_port = free_port(NGINX_IP)
        ndir = f"{d}/nginx"
        os.makedirs(ndir)
        user = ""
        if os.getuid() == 0:
            pw = pwd.getpwuid(0)
            user = f"user {pw.pw_name};"
        with open(f"{ndir}/nginx.conf", "w") as f:
            f.write(f"""load_module /usr/lib/nginx/modules/ngx_stream_module.so;
{user}
daemon off;
worker_processes 1;
pid {ndir}/nginx.pid;
error_log {ndir}/error.log warn;
events {{ worker_connections 8192; }}
stream {{
    map $ssl_preread_server_name $backend {{
        {SFU_NAME} {self.sfu[0]}:{self.sfu[1]};
        {BULK_NAME} {self.bulk[0]}:{self.bulk[1]};
        default {self.sfu[0]}:{self.sfu[1]};
    }}
    server {{
        listen {NGINX_IP}:{self.nginx_port};
        ssl_preread on;
        preread_timeout 5s;
        proxy_pass $backend;
        proxy_bind {NGINX_IP};
        proxy_connect_timeout 3s;
        proxy_timeout 300s;
    }}
}}
""")
        self.nginx_proc = self.procs.start(
            "nginx", ["nginx", "-p", ndir, "-e", f"{ndir}/error.log", "-c", f"{ndir}/nginx.conf"],
            PROXY_CPU)

        self.targets = {
            "direct": {"sfu": self.sfu, "bulk": self.bulk, "pids": []},
            "deadsfu": {"sfu": (DEADSFU_PROXY_IP, self.deadsfu_port),
                        "bulk": (DEADSFU_PROXY_IP, self.deadsfu_port),
                        "pids": [self.deadsfu_proc.pid]},
            "haproxy": {"sfu": (HAPROXY_IP, self.haproxy_port),
                        "bulk": (HAPROXY_IP, self.haproxy_port),
                        "pids": [self.haproxy_proc.pid]},
            "nginx": {"sfu": (NGINX_IP, self.nginx_port), "bulk": (NGINX_IP, self.nginx_port),
                      "pids": None},
        }
        for name, t in self.targets.items():
            for sni, key, path in ((SFU_NAME, "sfu", "/healthz"), (BULK_NAME, "bulk", "/healthz")):
                wait_for(f"{sni} through {name}",
                         lambda t=t, sni=sni, key=key, path=path:
                         self._status_ok(t[key], sni, path), self.procs, 30)
        nginx_pids = [self.nginx_proc.pid, *children(self.nginx_proc.pid)]
        self.targets["nginx"]["pids"] = nginx_pids
        log(f"nginx processes: {nginx_pids}")
        self.versions = {
            "haproxy": run(["haproxy", "-v"]).splitlines()[0],
            "nginx": subprocess.run(["nginx", "-v"], capture_output=True,
                                    text=True).stderr.strip(),
        }
        log("set-up ready")

    def _status_ok(self, addr, sni, path):
        status = tls_get(addr, sni, path, self.ca)
        return status.startswith("HTTP/1.1 200"), status

    def proxy_metrics(self):
        url = f"http://{DEADSFU_PROXY_IP}:{self.admin_port}/metrics"
        try:
            text = urllib.request.urlopen(url, timeout=2).read().decode()
        except OSError:
            return {}
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                k, _, v = line.rpartition(" ")
                try:
                    out[k] = float(v)
                except ValueError:
                    pass
        return out

    def stop(self):
        self.procs.stop_all()
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)


def tool(setup, *a, env=None):
    """Runs deadsfu-proxybench on WORK_CPU; its JSON report."""
    setup.procs.check()
    cmd = ["taskset", "-c", WORK_CPU, *setup.bench(*a)]
    p = subprocess.run(cmd, capture_output=True, text=True,
                       env=dict(os.environ, **(env or {})))
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def pids_arg(pids):
    return ["--proxy-pid", ",".join(map(str, pids))] if pids else []


def conns(setup, path, seconds, concurrency, rate=None, warmup=1.0):
    t = setup.targets[path]
    a = ["conns", "--target", "%s:%d" % t["sfu"], "--sni", SFU_NAME, "--ca", setup.ca,
         "--bind", CLIENT_IP, "--seconds", str(seconds), "--warmup", str(warmup),
         "--concurrency", str(concurrency), "--backend-pid", str(setup.sfu_proc.pid),
         *pids_arg(t["pids"])]
    if rate:
        a += ["--rate", str(rate)]
    return tool(setup, *a)


def bulk(setup, path, mb):
    t = setup.targets[path]
    return tool(setup, "bulk", "--target", "%s:%d" % t["bulk"], "--sni", BULK_NAME,
                "--ca", setup.ca, "--bind", CLIENT_IP, "--mb", str(mb),
                "--backend-pid", str(setup.bulk_proc.pid), *pids_arg(t["pids"]))


def udp_rcvbuf_errors():
    """The machine's count of UDP datagrams dropped for a full receive buffer."""
    with open("/proc/net/snmp") as f:
        rows = [l.split() for l in f if l.startswith("Udp:")]
    return int(rows[1][rows[0].index("RcvbufErrors")])


def ftl(setup, via, seconds, rate=None):
    a = ["ftl", "--ingest-ip", INGEST_IP, "--bind", CLIENT_IP, "--seconds", str(seconds)]
    if via:
        a += ["--via", f"{DEADSFU_PROXY_IP}:{setup.ftl_port}",
              *pids_arg(setup.targets["deadsfu"]["pids"])]
    if rate:
        a += ["--rate", str(int(rate))]
    before = setup.proxy_metrics() if via else {}
    drops = udp_rcvbuf_errors()
    r = tool(setup, *a, env={"DEADSFU_CLUSTER_URL": setup.admin_url})
    # Over the whole run (handshake and warm-up included), machine-wide.
    r["udp_rcvbuf_errors"] = udp_rcvbuf_errors() - drops
    if via:
        after = setup.proxy_metrics()
        for key, name in (
                ('deadsfu_proxy_ftl_datagrams_total{direction="to_sfu"}', "proxy_relayed"),
                ("deadsfu_proxy_ftl_datagrams_dropped_total", "proxy_dropped")):
            if key in after:
                r[name] = after[key] - before.get(key, 0.0)
    return r


def perf_report(data, *extra):
    return subprocess.run(["perf", "report", "-i", data, "--stdio", "-g", "none", *extra],
                          capture_output=True, text=True).stdout


def profile(setup, seconds, what, target, concurrency):
    """perf record -g on a proxy while it carries the `what` load (not a measured step); writes
    bench/proxy/profile-{target}-{what}.txt: CPU per unit of work, by system call and by
    binary, and the hottest functions."""
    pids = setup.targets[target]["pids"]
    data = f"{setup.dir}/perf-{target}-{what}.data"
    rec = subprocess.Popen(["perf", "record", "-q", "-g", "-F", "1999", "-p",
                            ",".join(map(str, pids)), "-o", data, "--", "sleep", str(seconds)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    if what == "conns":
        r = conns(setup, target, seconds - 1, concurrency, warmup=0.3)
        rate, unit = r["conns_per_s"], "connection"
    elif what == "bulk":
        r = bulk(setup, target, 2500)
        rate, unit = r["mb_per_s"], "MB"
    else:
        r = ftl(setup, True, seconds - 2.5)
        rate, unit = r["received_pps"], "packet"
    rec.wait()
    cpu = r["proxy_cpu_pct"] or 0.0
    per_unit_us = cpu / 100 / rate * 1e6 if rate else 0.0
    lines = [f"# {LABEL[target]} under the {what} load: {rate:,.0f} {unit}s/s at {cpu:.1f}% of "
             f"its core = {per_unit_us:.2f} µs of CPU per {unit}",
             f"# perf record -g -F 1999 -p <{target}>; load average {loadavg():.2f}", "",
             f"## Where that time goes (perf report --children: a system call with all it "
             f"calls), µs per {unit}"]
    for line in perf_report(data, "--children", "--sort", "symbol",
                            "--percent-limit", "0.5").splitlines():
        m = re.match(r"\s+([\d.]+)%\s+[\d.]+%\s+\[.\]\s+(\S+)", line)
        if m and (m.group(2).startswith("__x64_sys_") or m.group(2) == "handle_softirqs"):
            pct = float(m.group(1))
            lines.append(f"  {m.group(2):32} {pct:5.1f}%  {pct / 100 * per_unit_us:8.2f} µs")
    lines += ["", f"## By binary (self time), µs per {unit}"]
    for line in perf_report(data, "--no-children", "--sort", "dso").splitlines():
        m = re.match(r"\s+([\d.]+)%\s+(\S+)", line)
        if m:
            pct = float(m.group(1))
            lines.append(f"  {m.group(2):32} {pct:5.1f}%  {pct / 100 * per_unit_us:8.2f} µs")
    lines += ["", "## Hottest functions (self time, >= 0.7%)"]
    for line in perf_report(data, "--no-children", "--sort", "dso,symbol",
                            "--percent-limit", "0.7").splitlines():
        if line.strip() and not line.startswith("#"):
            lines.append("  " + re.sub(r"\s+", " ", line.strip()).removesuffix(" - -")[:140])
    path = os.path.join(HERE, f"profile-{target}-{what}.txt")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    log(f"profile written to {path}")
    return path


def measure(args, setup):
    q = args.quick
    secs = 2 if q else args.seconds
    res = {"steps": {}}
    steps = set(args.steps.split(","))

    if "conns" in steps:
        idle_step(setup, res)
        conns_step(args, setup, secs, res)
    if "latency" in steps:
        latency_step(args, setup, secs, res)
    if "bulk" in steps:
        bulk_step(args, setup, res)
    if "ftl" in steps:
        ftl_step(args, setup, secs, res)
    if args.profile:
        res["profiles"] = []
        for item in args.profile.split(","):
            what, _, target = item.partition(":")
            res["profiles"].append(os.path.relpath(
                profile(setup, 6, what, target or "deadsfu", args.concurrency), ROOT))
    return res


def cpu_secs(pids):
    total = 0.0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        fields = stat[stat.rfind(")") + 2:].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def idle_step(setup, res, seconds=4.0):
    """Each proxy's own CPU with no load (route cache refreshes, timers)."""
    proxies = [p for p in PATHS if p != "direct"]
    before = {p: cpu_secs(setup.targets[p]["pids"]) for p in proxies}
    time.sleep(seconds)
    res["steps"]["idle_cpu_pct"] = {
        p: (cpu_secs(setup.targets[p]["pids"]) - before[p]) * 100 / seconds for p in proxies}
    log("== idle CPU: " + ", ".join(f"{p} {v:.2f}%" for p, v in
                                    res["steps"]["idle_cpu_pct"].items()))


def conns_step(args, setup, secs, res):
    log("== 1. new TLS connections per second (closed loop)")
    res["steps"]["conns"] = {}
    order = PATHS * args.rounds
    runs = {p: [] for p in PATHS}
    for p in order:
        r = conns(setup, p, secs, args.concurrency)
        runs[p].append(r)
        log(f"  {p:8} {r['conns_per_s']:8.0f} conns/s  p50 {r['p50_ms']} ms  p99 {r['p99_ms']} "
            f"ms  proxy CPU {r['proxy_cpu_pct']}  errors {r['errors']} {r['first_error'] or ''}")
    for p in PATHS:
        # The best round: other work on the machine only ever lowers a rate.
        best = max(runs[p], key=lambda r: r["conns_per_s"])
        best["rounds"] = [r["conns_per_s"] for r in runs[p]]
        res["steps"]["conns"][p] = best


def latency_step(args, setup, secs, res):
    if "conns" in res["steps"]:
        half = res["steps"]["conns"]["haproxy"]["conns_per_s"] / 2
    else:
        half = args.latency_rate
    log(f"== 2. latency at {half:.0f} new connections/s (half of HAProxy's)")
    res["steps"]["latency"] = {"rate": half, "paths": {}}
    for p in PATHS:
        r = conns(setup, p, secs, 512, rate=half)
        res["steps"]["latency"]["paths"][p] = r
        log(f"  {p:8} p50 {r['p50_ms']} ms  p90 {r['p90_ms']} ms  p99 {r['p99_ms']} ms  "
            f"proxy CPU {r['proxy_cpu_pct']}  done {r['conns_per_s']:.0f}/s  errors {r['errors']}")


def bulk_step(args, setup, res):
    mb = 200 if args.quick else args.bulk_mb
    log(f"== 3. bulk, {mb} MB over one connection")
    res["steps"]["bulk"] = {"mb": mb, "paths": {}}
    runs = {p: [] for p in PATHS}
    for p in PATHS * args.rounds:
        r = bulk(setup, p, mb)
        runs[p].append(r)
        log(f"  {p:8} {r['mb_per_s']:8.0f} MB/s  proxy CPU {r['proxy_cpu_pct']}  "
            f"backend CPU {r['backend_cpu_pct']:.0f}  generator CPU {r['generator_cpu_pct']:.0f}")
    for p in PATHS:
        best = max(runs[p], key=lambda r: r["mb_per_s"])
        best["rounds"] = [r["mb_per_s"] for r in runs[p]]
        res["steps"]["bulk"]["paths"][p] = best


def ftl_step(args, setup, secs, res):
    log("== 4. FTL relay")
    f = {}
    f["direct_max"] = ftl(setup, False, secs)
    f["proxy_max"] = ftl(setup, True, secs)
    for k in ("direct_max", "proxy_max"):
        r = f[k]
        log(f"  {k:10} sent {r['sent_pps']:8.0f}/s received {r['received_pps']:8.0f}/s "
            f"loss {r['loss_pct']:.2f}%  proxy CPU {r['proxy_cpu_pct']}  "
            f"pps/core {r['pps_per_proxy_core']}")
    rate = max(1000, round(f["proxy_max"]["received_pps"] / 2, -3))
    f["rate"] = rate
    f["direct_half"] = ftl(setup, False, secs, rate)
    f["proxy_half"] = ftl(setup, True, secs, rate)
    for k in ("direct_half", "proxy_half"):
        r = f[k]
        log(f"  {k:10} at {rate:.0f}/s: received {r['received_pps']:8.0f}/s loss "
            f"{r['loss_pct']:.2f}%  p50 {r['latency_p50_ms']} ms  p99 {r['latency_p99_ms']} ms  "
            f"proxy CPU {r['proxy_cpu_pct']}  rcvbuf drops {r['udp_rcvbuf_errors']}")
    res["steps"]["ftl"] = f


def commit():
    """The commit measured, marked when the product's code differs from it."""
    try:
        head = run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]).strip()
        dirty = subprocess.run(["git", "-C", ROOT, "diff", "--quiet", "HEAD", "--", "src",
                                "crates", ":!crates/loadtest"]).returncode != 0
        return head + (" with uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine():
    def sh(cmd):
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
        except OSError:
            return ""
    lscpu = sh("lscpu | grep -E '^(Architecture|CPU\\(s\\)|Model name|Thread|Hypervisor|L2|L3)'")
    return f"{sh('uname -srvmo')}\n{lscpu}\n{sh('rustc --version')}"


def fmt(v, nd=0, unit=""):
    if v is None:
        return "–"
    return f"{v:,.{nd}f}{unit}"


def targets(res):
    s = res["steps"]
    c, lat, b = s["conns"], s["latency"]["paths"], s["bulk"]["paths"]
    out = []
    dpc, hpc = c["deadsfu"]["conns_per_proxy_core"], c["haproxy"]["conns_per_proxy_core"]
    ratio = dpc / hpc if dpc and hpc else None
    out.append(("new connections/s ≥ 1.2× HAProxy's (per proxy core)",
                f"{fmt(dpc)} vs {fmt(hpc)} per core = {fmt(ratio, 2)}×",
                ratio is not None and ratio >= 1.2))
    achieved = c["deadsfu"]["conns_per_s"] / c["haproxy"]["conns_per_s"]
    out.append(("(for information: the achieved rates, both bounded by the backend's core)",
                f"{fmt(c['deadsfu']['conns_per_s'])} vs {fmt(c['haproxy']['conns_per_s'])}/s = "
                f"{achieved:.2f}×", None))
    of_direct = c["deadsfu"]["conns_per_s"] / c["direct"]["conns_per_s"]
    out.append(("new connections/s within 80% of direct",
                f"{fmt(c['deadsfu']['conns_per_s'])} vs {fmt(c['direct']['conns_per_s'])}/s = "
                f"{of_direct * 100:.0f}%", of_direct >= 0.8))
    bd, bh = b["deadsfu"]["mb_per_s"], b["haproxy"]["mb_per_s"]
    out.append(("bulk MB/s ≥ HAProxy's", f"{bd:,.0f} vs {bh:,.0f} MB/s", bd >= bh))
    added = lat["deadsfu"]["p99_ms"] - lat["direct"]["p99_ms"]
    out.append(("added p99 latency < 1 ms at half load",
                f"{added:+.3f} ms (p99 {lat['deadsfu']['p99_ms']:.3f} vs direct "
                f"{lat['direct']['p99_ms']:.3f} ms at {s['latency']['rate']:.0f}/s)",
                added < 1.0))
    return out


def other_work(res):
    other = res.get("other_cpu_pct")
    if other is None:
        return ""
    return f", other work on the machine during it about {other:.0f}% of a core"


def profiles_line(res):
    """The profile files present (`--profile` writes them; a run without it keeps the last)."""
    names = sorted(n for n in os.listdir(HERE) if n.startswith("profile-") and n.endswith(".txt"))
    if not names:
        return ""
    return "; profiles (`--profile`): " + ", ".join(
        f"[{n}](bench/proxy/{n})" for n in names)


def idle_line(res):
    idle = res["steps"].get("idle_cpu_pct")
    if not idle:
        return ""
    return ("Idle CPU of each proxy (no load, 4 s): " +
            ", ".join(f"{LABEL[p]} {v:.1f}%" for p, v in idle.items()) + ".\n\n")


def render(res, path):
    s = res["steps"]
    c, lat, b, f = s["conns"], s["latency"], s["bulk"], s["ftl"]
    d_lat = lat["paths"]["direct"]
    rows = []
    for p in PATHS:
        cp, lp, bp = c[p], lat["paths"][p], b["paths"][p]
        added50 = None if p == "direct" else lp["p50_ms"] - d_lat["p50_ms"]
        added99 = None if p == "direct" else lp["p99_ms"] - d_lat["p99_ms"]
        rows.append(
            f"| {LABEL[p]} | {fmt(cp['conns_per_s'])} | {fmt(cp['proxy_cpu_pct'], 0, '%')} | "
            f"{fmt(cp['conns_per_proxy_core'])} | {fmt(lp['p50_ms'], 3)} / {fmt(lp['p99_ms'], 3)} | "
            f"{fmt(added50, 3)} / {fmt(added99, 3)} | {fmt(bp['mb_per_s'])} | "
            f"{fmt(bp['proxy_cpu_pct'], 0, '%')} | {fmt(bp['mb_per_s_per_proxy_core'])} |")
    fr = []
    for k, label in (("direct_max", "direct, as fast as the pusher goes"),
                     ("proxy_max", "deadsfu proxy, as fast as the pusher goes"),
                     ("direct_half", f"direct, {f['rate']:,.0f}/s"),
                     ("proxy_half", f"deadsfu proxy, {f['rate']:,.0f}/s")):
        r = f[k]
        fr.append(f"| {label} | {fmt(r['sent_pps'])} | {fmt(r['received_pps'])} | "
                  f"{r['loss_pct']:.2f}% | {fmt(r['proxy_cpu_pct'], 0, '%')} | "
                  f"{fmt(r['pps_per_proxy_core'])} | {fmt(r['latency_p50_ms'], 3)} / "
                  f"{fmt(r['latency_p99_ms'], 3)} |")
    fadd50 = f["proxy_half"]["latency_p50_ms"] - f["direct_half"]["latency_p50_ms"]
    fadd99 = f["proxy_half"]["latency_p99_ms"] - f["direct_half"]["latency_p99_ms"]
    tg = targets(res)
    cfg = res["config"]
    md = f"""{HEADING}

Measured by `bench/proxy/run` ({res['date']}, commit {res.get('commit', 'unknown')}{', --quick' if cfg.get('quick') else ''};
load average {res['loadavg_before']:.2f} before the run{other_work(res)}); the method is in
[bench/README.md](bench/README.md#front-line-proxy). One SFU (`deadsfu serve`, ECDSA P-256
certificate from a test CA) behind each of: nothing (direct), `deadsfu proxy`,
{res['versions']['haproxy'].split(' - ')[0]} (`mode tcp`, `req.ssl_sni`, `nbthread 1`) and
{res['versions']['nginx'].replace('nginx version: ', '')} (`ssl_preread`, one worker).
`deadsfu proxy` and HAProxy send a PROXY v2 header to the SFU (which asks for it, as in
production); nginx's stream proxy writes only PROXY v1, which the SFU refuses, so it sends
none. The proxy under test runs alone on CPU {PROXY_CPU}; the SFU, the bulk server, Redis and
the load generator share CPU {WORK_CPU}. So the achieved rates are bounded by that core on
every path, and what tells the proxies apart is their own CPU: "per proxy core" is the
rate divided by the proxy's CPU share. Each figure is
{cfg['seconds']:g} s after 1 s of warm-up{f"; new connections/s and bulk MB/s are the best of {cfg['rounds']} rounds, interleaved over the paths" if cfg['rounds'] > 1 else ''}.

| path | new conns/s | proxy CPU | conns/s per proxy core | latency p50 / p99 ms at {lat['rate']:,.0f}/s | added p50 / p99 ms | bulk MB/s | proxy CPU | MB/s per proxy core |
|---|---:|---:|---:|---:|---:|---:|---:|---:|
""" + "\n".join(rows) + f"""

{idle_line(res)}New connections: {cfg['concurrency']} workers each open a TCP connection from
{CLIENT_IP}, make a full TLS 1.3 handshake (no resumption) with SNI `{SFU_NAME}`, send one
`GET /healthz` with `Connection: close` and read to the end; the latency is from `connect` to
the last byte, open loop at half of HAProxy's rate. Bulk: one connection downloading
{b['mb']:,} MB of zeros from the bench's TLS server (SNI `{BULK_NAME}`), from the request to
the last byte.

FTL relay (`deadsfu proxy` only; HAProxy and nginx have no FTL): {f['proxy_max']['datagram_bytes']}-byte
RTP datagrams from one FTL session into an FTL ingest (the `ftl` crate's server core, counting
and timing every datagram); latency from the send call to the ingest's `recvmmsg`, same clock.

| FTL path | sent/s | received/s | loss | proxy CPU | packets/s per proxy core | latency p50 / p99 ms |
|---|---:|---:|---:|---:|---:|---:|
""" + "\n".join(fr) + f"""

Added by the FTL relay at {f['rate']:,.0f} packets/s: p50 {fadd50:+.3f} ms, p99 {fadd99:+.3f} ms.

### Targets (front-line proxy issue)

| target | measured | met |
|---|---|:---:|
""" + "\n".join(f"| {t} | {v} | {'–' if ok is None else 'yes' if ok else 'no'} |"
                for t, v, ok in tg) + f"""

Machine:

```
{res['machine']}
```

Raw figures: `bench/proxy/results.json`{profiles_line(res)}.
"""
    if os.path.exists(NOTES):
        md += "\n" + open(NOTES).read()
    try:
        text = open(path).read()
    except OSError:
        text = ""
    start = text.find(HEADING + "\n")
    if start < 0:
        new = text.rstrip("\n") + "\n\n" + md
    else:
        m = re.compile(r"^## ", re.M).search(text, start + len(HEADING))
        end = m.start() if m else len(text)
        new = text[:start] + md + ("\n" + text[end:] if m else "")
    with open(path, "w") as fh:
        fh.write(new)
    log(f"wrote the '{HEADING}' section of {path}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release"))
    ap.add_argument("--quick", action="store_true", help="2 s steps, 200 MB bulk")
    ap.add_argument("--seconds", type=float, default=8.0, help="measuring window of each step")
    ap.add_argument("--rounds", type=int, default=2,
                    help="rounds of the connections and bulk steps (the best is reported)")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--bulk-mb", type=int, default=1000)
    ap.add_argument("--profile", nargs="?", default="",
                    const="conns,conns:haproxy,conns:nginx,bulk,bulk:haproxy,ftl",
                    help="also perf-record a proxy under these loads, LOAD[:PROXY] (default: "
                    "deadsfu proxy, HAProxy and nginx under the connection load, deadsfu proxy "
                    "and HAProxy under bulk, deadsfu proxy relaying FTL), into "
                    "bench/proxy/profile-PROXY-LOAD.txt")
    ap.add_argument("--steps", default="conns,latency,bulk,ftl",
                    help="steps to run (a subset only prints its figures)")
    ap.add_argument("--latency-rate", type=float, default=500.0,
                    help="rate of the latency step when the connections step is not run")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    ap.add_argument("--out", default=os.path.join(ROOT, "BENCHMARKS.md"))
    ap.add_argument("--render-only", action="store_true",
                    help="rewrite the BENCHMARKS.md section from bench/proxy/results.json")
    args = ap.parse_args()
    if args.quick:
        args.rounds = 1
    if args.render_only:
        with open(RESULTS) as f:
            render(json.load(f), args.out)
        return
    # bench/proxy/run reads the load average before it builds.
    load = float(os.environ.get("PROXYBENCH_LOADAVG") or loadavg())
    if load > 1.0:
        log(f"warning: load average {load:.2f}: other work on the machine skews the figures")
    setup = Setup(args)
    started = time.time()
    busy0, own0 = machine_busy_secs(), own_secs()
    try:
        setup.start()
        res = measure(args, setup)
    finally:
        setup.stop()
    wall = time.time() - started
    other = max(0.0, (machine_busy_secs() - busy0) - (own_secs() - own0)) * 100 / wall
    log(f"other work on the machine during the run: about {other:.0f}% of a core")
    res.update({
        "date": datetime.date.today().isoformat(),
        "commit": commit(),
        "loadavg_before": load,
        "loadavg_after": loadavg(),
        "other_cpu_pct": other,
        "duration_s": round(time.time() - started),
        "machine": machine(),
        "versions": setup.versions,
        "config": {"quick": args.quick, "seconds": 2 if args.quick else args.seconds,
                   "rounds": args.rounds, "concurrency": args.concurrency,
                   "proxy_cpu": PROXY_CPU, "work_cpu": WORK_CPU},
    })
    if set(args.steps.split(",")) != {"conns", "latency", "bulk", "ftl"}:
        log("a subset of the steps: BENCHMARKS.md and results.json left alone")
        print(json.dumps(res, indent=1))
        return
    res["targets"] = [{"target": t, "measured": v, "met": ok} for t, v, ok in targets(res)]
    with open(RESULTS, "w") as f:
        json.dump(res, f, indent=1)
    render(res, args.out)
    for t, v, ok in targets(res):
        log(f"  {'    ' if ok is None else 'MET ' if ok else 'MISS'} {t}: {v}")


if __name__ == "__main__":
    main()
