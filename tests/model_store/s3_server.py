"""A real S3-compatible server on loopback for the s3:// tests: moto in server mode.

moto lives in its own virtualenv, .venv-s3 (made by scripts/setup.sh), because it needs
boto3/botocore, which pin python-dateutil<3 while the kubernetes client in .venv needs >=3.
The tests talk to it only over HTTP, with the minio client that radixserve itself uses.

The server runs with IAM checks on, so wrong keys and missing permissions get the same
errors as from AWS: `start_s3_server` creates two IAM users with moto's IAM API (boto3, run
with .venv-s3's Python, while the server still accepts anything), then turns checking on.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from minio import Minio

REPO = Path(__file__).resolve().parents[2]
S3_VENV = REPO / ".venv-s3"
MOTO_SERVER = S3_VENV / "bin" / "moto_server"
S3_PYTHON = S3_VENV / "bin" / "python"
START_TIMEOUT_S = 60.0

# Run by .venv-s3's Python against the server: an "admin" who may do anything in S3, and a
# "denied" user whose valid keys may touch only another bucket (-> AccessDenied on ours).
_IAM_SETUP = """
import json, sys, boto3
iam = boto3.client("iam", endpoint_url=sys.argv[1], region_name="us-east-1",
                   aws_access_key_id="setup", aws_secret_access_key="setup")
policies = {
    "admin": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
    "denied": [{"Effect": "Allow", "Action": "s3:*",
                "Resource": ["arn:aws:s3:::other-bucket", "arn:aws:s3:::other-bucket/*"]}],
}
keys = {}
for name, statements in policies.items():
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName=name,
                        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": statements}))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    keys[name] = [key["AccessKeyId"], key["SecretAccessKey"]]
print(json.dumps(keys))
"""
# werkzeug's request log line: ... "GET /bucket/key?query HTTP/1.1" 206 -
_LOG_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>[^ ?"]*)(?:\?(?P<query>[^ "]*))? HTTP/[0-9.]+" (?P<status>\d{3})')
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str

    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str  # /bucket/key, URL-encoded as sent
    query: str
    status: int


@dataclass
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    process: subprocess.Popen[bytes]
    log_path: Path
    admin: Credentials
    denied: Credentials

    @property
    def host(self) -> str:
        return self.endpoint.removeprefix("http://")

    def client(self, credentials: Credentials | None = None) -> Minio:
        creds = credentials or self.admin
        return Minio(self.host, creds.access_key, creds.secret_key, secure=False)

    def requests(self) -> list[LoggedRequest]:
        """Every request the server has logged so far, in order."""
        found = []
        for line in _ANSI.sub("", self.log_path.read_text(errors="replace")).splitlines():
            match = _LOG_LINE.search(line)
            if match:
                found.append(LoggedRequest(match["method"], match["path"], match["query"] or "",
                                           int(match["status"])))
        return found

    def wait_for_requests(self, done: Callable[[list[LoggedRequest]], bool], timeout: float = 10.0) \
            -> list[LoggedRequest]:
        """The log once `done(log)` holds: werkzeug writes a line just after sending the response."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.requests()
            if done(log) or time.monotonic() > deadline:
                return log
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_up(process: subprocess.Popen[bytes], endpoint: str, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            pytest.fail(f"moto_server exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"moto_server did not answer on {endpoint} within {START_TIMEOUT_S:.0f}s:\n"
                            f"{log_path.read_text()[-3000:]}")
            time.sleep(0.1)


def start_s3_server(workdir: Path) -> S3Server:
    """Start moto_server on a free loopback port with two IAM users and IAM checks on."""
    if not MOTO_SERVER.exists():
        pytest.fail(f"{MOTO_SERVER.relative_to(REPO)} is missing: run scripts/setup.sh, which creates the "
                    "separate .venv-s3 with moto[server] for the S3 tests")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log_path = workdir / "moto_server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PYTHONUNBUFFERED"] = "1"
    with log_path.open("wb") as log:
        process = subprocess.Popen([str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)],
                                   stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_until_up(process, endpoint, log_path)
        setup = subprocess.run([str(S3_PYTHON), "-c", _IAM_SETUP, endpoint], env=env, capture_output=True,
                               text=True, timeout=120)
        if setup.returncode != 0:
            pytest.fail(f"creating IAM users on moto failed:\n{setup.stderr[-3000:]}")
        keys = json.loads(setup.stdout)
        # From now on every request must be signed by a known key with a policy allowing it.
        request = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=b"0", method="POST",
                                         headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.load(response)["status"] == "ok"
    except BaseException:
        process.kill()
        process.wait(timeout=10)
        raise
    return S3Server(endpoint, process, log_path, Credentials(*keys["admin"]), Credentials(*keys["denied"]))
