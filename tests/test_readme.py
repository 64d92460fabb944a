"""README's main command, run as written in a fresh copy of the repository, answers a chat request."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import openai
import pytest

REPO = Path(__file__).resolve().parents[1]
# Set-up in a fresh copy installs into a new .venv (torch from this machine's disk), then serves.
TIMEOUT_S = 900


def readme_main_command() -> str:
    text = (REPO / "README.md").read_text()
    blocks: list[str] = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    commands = [b.strip() for b in blocks if "radixserve serve" in b]
    assert commands, "README has no sh block with `radixserve serve`"
    return commands[0]


def fresh_copy(dest: Path) -> None:
    """What `git clone` of this working tree gives: tracked and untracked-but-not-ignored files."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


@pytest.mark.slow
def test_readme_main_command_answers_a_chat_request(tmp_path: Path) -> None:
    command = readme_main_command()
    assert command == "bash scripts/setup.sh && .venv/bin/radixserve serve"
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", 30000)) != 0, "port 30000 is taken; the README command needs it"
    repo = tmp_path / "radixserve"
    fresh_copy(repo)
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    proc = subprocess.Popen(["bash", "-c", command], cwd=repo, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-4000:]
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-4000:]
            try:
                if httpx.get("http://127.0.0.1:30000/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        c = openai.OpenAI(base_url="http://127.0.0.1:30000/v1", api_key="none", max_retries=0)
        r = c.chat.completions.create(model="SmolLM2-135M-Instruct", max_tokens=16, temperature=0,
                                      messages=[{"role": "user", "content": "What is the capital of France?"}])
        assert "Paris" in (r.choices[0].message.content or "")
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal that ran the command
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    assert proc.returncode == 0, (tmp_path / "serve.log").read_text()[-4000:]
