"""Start and stop the real local servers chargectl's integration tests (and the demo, by hand) use.

Every server binds 127.0.0.1 on a free port and runs in its own process group, so stopping it
(``Server.stop``) kills the whole group, even children a launcher script forked.

    python scripts/backends.py install            # install what the package registries provide
    python scripts/backends.py start pubsub       # run one in the foreground (Ctrl-C stops it)
    python scripts/backends.py check              # which backends this machine can run

Each start command's flags are explained where it is defined below.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

SDK = Path(os.environ.get("CHARGECTL_GCLOUD_SDK", "/usr/lib/google-cloud-sdk"))
PUBSUB_JAR_DIR = SDK / "platform" / "pubsub-emulator" / "lib"
FIRESTORE_JAR = SDK / "platform" / "cloud-firestore-emulator" / "cloud-firestore-emulator.jar"
HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent

# Process groups started by this module in this interpreter (checked for leftovers at the end).
STARTED_GROUPS: list[int] = []


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def group_alive(pgid: int) -> bool:
    """True if any non-zombie process is still in process group ``pgid``."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # fields after the "(comm)" part: state ppid pgrp ...
        rest = stat[stat.rfind(")") + 2 :].split()
        if len(rest) > 2 and int(rest[2]) == pgid and rest[0] != "Z":
            return True
    return False


@dataclass
class Server:
    """A running backend: its process (group), port and the env a client needs."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pgid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        path = self.workdir / f"{self.name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self) -> None:
        """Kill the whole process group (TERM, then KILL) and reap the leader."""
        for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, sig)
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                self.proc.poll()
                if not group_alive(self.pgid):
                    break
                time.sleep(0.05)
            else:
                continue
            break
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)


def _spawn(
    name: str,
    argv: list[str],
    port: int,
    workdir: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Server:
    workdir.mkdir(parents=True, exist_ok=True)
    log = open(workdir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        cwd=str(cwd or workdir),
        env={**os.environ, **(env or {})},
    )
    log.close()
    STARTED_GROUPS.append(proc.pid)
    return Server(name, proc, port, workdir)


def _wait_http(server: Server, path: str, timeout_s: float, ok: Callable[[int, bytes], bool]) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.proc.returncode}: {server.log()}")
        try:
            with urllib.request.urlopen(server.url + path, timeout=1) as resp:
                if ok(resp.status, resp.read()):
                    return
        except urllib.error.HTTPError as exc:
            if ok(exc.code, b""):
                return
            last = str(exc)
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"{server.name} not ready after {timeout_s}s ({last}): {server.log()}")


# ----------------------------------------------------------------------------- availability


def pubsub_jar() -> Path | None:
    jars = sorted(PUBSUB_JAR_DIR.glob("cloud-pubsub-emulator-*-all.jar")) if PUBSUB_JAR_DIR.exists() else []
    return jars[-1] if jars else None


def missing(name: str) -> str | None:
    """Why backend ``name`` cannot run here, or None if it can."""
    if name in ("pubsub", "firestore") and shutil.which("java") is None:
        return "java is not installed (the Google Cloud SDK emulators need it)"
    if name == "pubsub" and pubsub_jar() is None:
        return f"Pub/Sub emulator jar not found under {PUBSUB_JAR_DIR}"
    if name == "firestore" and not FIRESTORE_JAR.exists():
        return f"Firestore emulator jar not found at {FIRESTORE_JAR}"
    if name == "victoriametrics" and shutil.which("victoria-metrics") is None:
        return "victoria-metrics is not installed (Debian package victoria-metrics)"
    if name == "influxdb" and shutil.which("influxd") is None:
        return "influxd is not installed (Debian package influxdb)"
    if name == "drongo" and not (BIN / "drongo").exists() and shutil.which("drongo") is None:
        return "drongo is not installed (pip install drongo)"
    return None


# ----------------------------------------------------------------------------- starters


def start_pubsub(workdir: Path, port: int | None = None) -> Server:
    jar = pubsub_jar()
    if jar is None:
        raise RuntimeError(missing("pubsub"))
    port = port or free_port()
    server = _spawn("pubsub", ["java", "-jar", str(jar), "--host=127.0.0.1", f"--port={port}"], port, workdir)
    server.env = {"PUBSUB_EMULATOR_HOST": server.host}
    _wait_http(server, "/", 60, lambda status, body: status == 200)
    return server


def reset_pubsub(server: Server) -> None:
    """Wipe every topic and subscription."""
    req = urllib.request.Request(server.url + "/reset", method="POST", data=b"")
    urllib.request.urlopen(req, timeout=10).close()


def start_firestore(workdir: Path, port: int | None = None, rules: Path | None = None) -> Server:
    """The Java Firestore emulator; with ``rules``, it evaluates those security rules for client requests."""
    port = port or free_port()
    ws = free_port()
    argv = [
        "java",
        "-Duser.language=en",
        "-cp",
        str(FIRESTORE_JAR),
        "com.google.cloud.datastore.emulator.firestore.CloudFirestore",
        "start",
        "--host=127.0.0.1",
        f"--port={port}",
        f"--websocket_port={ws}",
        "--database-mode=firestore-native",
        *([f"--rules={rules}"] if rules is not None else []),
    ]
    server = _spawn("firestore-rules" if rules is not None else "firestore", argv, port, workdir)
    server.env = {"FIRESTORE_EMULATOR_HOST": server.host}
    _wait_http(server, "/", 60, lambda status, body: status == 200)
    return server


def clear_firestore(server: Server, project: str, database: str = "(default)") -> None:
    """Delete every document of ``project``/``database``."""
    url = f"{server.url}/emulator/v1/projects/{project}/databases/{database}/documents"
    urllib.request.urlopen(urllib.request.Request(url, method="DELETE"), timeout=30).close()


def start_localstripe(workdir: Path, port: int | None = None, extensions: Path | None = None) -> Server:
    """localstripe; ``extensions`` is a Python file whose ``install(app)`` adds routes (tests' helpers)."""
    port = port or free_port()
    argv = [sys.executable, str(HERE / "localstripe_server.py"), "--port", str(port)]
    env: dict[str, str] = {}
    if extensions is not None:
        argv += ["--extensions", extensions.stem]
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(extensions.parent), os.environ.get("PYTHONPATH")) if p
        )
    server = _spawn("localstripe", argv, port, workdir, env=env)
    server.env = {"STRIPE_API_BASE": server.url}
    _wait_http(server, "/v1/customers", 30, lambda status, body: status in (200, 401))
    return server


def start_victoriametrics(workdir: Path, port: int | None = None) -> Server:
    port = port or free_port()
    data = workdir / "vm-data"
    argv = [
        "victoria-metrics",
        f"-httpListenAddr=127.0.0.1:{port}",
        f"-storageDataPath={data}",
        "-retentionPeriod=100y",
        "-search.latencyOffset=0s",
        "-search.disableCache",
        "-loggerLevel=WARN",
    ]
    server = _spawn("victoriametrics", argv, port, workdir)
    _wait_http(server, "/health", 30, lambda status, body: status == 200)
    return server


def start_influxdb(workdir: Path, port: int | None = None) -> Server:
    """InfluxDB 1.x (Debian's ``influxd``) with its HTTP API on ``port`` and database ``chargectl``.

    Both of its ports are set: the defaults (8086 for HTTP, 8088 for its RPC) may be taken, 8086 by a
    Firestore emulator. No authentication, no usage reporting, data in ``workdir``."""
    port = port or free_port()
    conf = workdir / "influxdb.conf"
    workdir.mkdir(parents=True, exist_ok=True)
    conf.write_text(
        "reporting-disabled = true\n"
        f'bind-address = "127.0.0.1:{free_port()}"\n'
        f'[meta]\n  dir = "{workdir / "meta"}"\n'
        f'[data]\n  dir = "{workdir / "data"}"\n  wal-dir = "{workdir / "wal"}"\n'
        "  query-log-enabled = false\n"
        "[monitor]\n  store-enabled = false\n"
        f'[http]\n  enabled = true\n  bind-address = "127.0.0.1:{port}"\n'
        "  auth-enabled = false\n  log-enabled = false\n"
    )
    server = _spawn("influxdb", ["influxd", "run", "-config", str(conf)], port, workdir)
    _wait_http(server, "/ping", 30, lambda status, body: status == 204)
    data = urllib.parse.urlencode({"q": "CREATE DATABASE chargectl"}).encode()
    with urllib.request.urlopen(server.url + "/query", data=data, timeout=10) as resp:
        resp.read()
    return server


def start_drongo(workdir: Path, port: int | None = None) -> Server:
    port = port or free_port()
    exe = str(BIN / "drongo") if (BIN / "drongo").exists() else "drongo"
    server = _spawn("drongo", [exe, "server", "--host", "127.0.0.1", "--port", str(port)], port, workdir)
    _wait_http(server, "/", 30, lambda status, body: status < 500)
    return server


STARTERS: dict[str, Callable[..., Server]] = {
    "pubsub": start_pubsub,
    "firestore": start_firestore,
    "localstripe": start_localstripe,
    "victoriametrics": start_victoriametrics,
    "influxdb": start_influxdb,
    "drongo": start_drongo,
}


# ----------------------------------------------------------------------------- CLI


CHROMIUM = "/usr/bin/chromium"


def chromium_missing() -> str | None:
    """Why the console's browser tests cannot run here, or None (Debian's chromium, driven by Playwright)."""
    if not Path(CHROMIUM).exists():
        return "chromium is not installed (Debian package chromium)"
    return None


def _apt_install(package: str) -> bool:
    apt = shutil.which("apt-get")
    if apt is None:
        return False
    cmd = [apt, "install", "-y", "-q", "--no-install-recommends", package]
    if os.geteuid() != 0:
        cmd.insert(0, "sudo")
    return subprocess.call(cmd, stdout=subprocess.DEVNULL) == 0


def install() -> int:
    """Install what the registries provide if missing: VictoriaMetrics, InfluxDB 1.x and Chromium from
    Debian."""
    if shutil.which("victoria-metrics") is None and not _apt_install("victoria-metrics"):
        print("warning: could not install victoria-metrics; its tests will be skipped")
    if shutil.which("influxd") is None and not _apt_install("influxdb"):
        print("warning: could not install influxdb; its tests will be skipped")
    if chromium_missing() and not _apt_install("chromium"):
        print("warning: could not install chromium; the console's browser tests will be skipped")
    for name in STARTERS:
        reason = missing(name)
        if reason:
            print(f"note: {name}: {reason}")
    if chromium_missing():
        print(f"note: browser: {chromium_missing()}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("install", help="install missing backends from the package registries")
    sub.add_parser("check", help="list which backends can run here")
    start = sub.add_parser("start", help="run one backend in the foreground")
    start.add_argument("name", choices=sorted(STARTERS))
    start.add_argument("--port", type=int, default=None)
    args = ap.parse_args()
    if args.cmd == "install":
        return install()
    if args.cmd == "check":
        for name in STARTERS:
            print(f"{name:16} {missing(name) or 'ok'}")
        print(f"{'chromium':16} {chromium_missing() or 'ok'}")
        return 0
    workdir = Path(tempfile.mkdtemp(prefix=f"chargectl-{args.name}-"))
    server = STARTERS[args.name](workdir, args.port)
    print(f"{args.name} on {server.url}")
    for key, value in server.env.items():
        print(f"export {key}={value}")
    try:
        while server.proc.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
