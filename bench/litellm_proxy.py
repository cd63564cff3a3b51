"""LiteLLM's proxy, in a venv of its own under bench/, in front of the same fake provider.

The version is pinned: 1.108.7 is the newest release whose `litellm[proxy]` dependencies
all install from PyPI (1.108.9 and later pin `litellm-enterprise` / `litellm-proxy-extras`
builds that are not published there; 1.107.0 was a compromised release and is gone).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

VERSION = "1.108.7"
VENV = Path(__file__).resolve().parent / f".venv-litellm-{VERSION}"
MASTER_KEY = "sk-bench-master-key"


def ensure_installed() -> Path:
    litellm = VENV / "bin" / "litellm"
    if litellm.exists():
        return litellm
    print(f"installing litellm[proxy]=={VERSION} into {VENV} (once; a few minutes)",
          flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    log = VENV / "install.log"
    with log.open("wb") as out:
        installed = subprocess.run(
            [str(VENV / "bin" / "pip"), "install", "-q", f"litellm[proxy]=={VERSION}"],
            stdout=out, stderr=subprocess.STDOUT)
    if installed.returncode != 0:
        raise SystemExit(f"installing LiteLLM failed:\n{log.read_text()[-3000:]}")
    return litellm


def start(workdir: Path, port: int, provider_url: str) -> subprocess.Popen[bytes]:
    """The proxy on 127.0.0.1:`port`, one worker, a master key, no database."""
    litellm = ensure_installed()
    config = workdir / "litellm.yaml"
    config.write_text(f"""model_list:
  - model_name: gpt-image-2
    litellm_params:
      model: openai/gpt-image-2
      api_base: {provider_url}/v1
      api_key: sk-fake-provider-key
litellm_settings:
  drop_params: true
general_settings:
  master_key: {MASTER_KEY}
""")
    log = (workdir / "litellm.log").open("wb")
    process = subprocess.Popen(
        [str(litellm), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
         "--num_workers", "1"],
        cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "LITELLM_LOG": "ERROR", "LITELLM_MODE": "PRODUCTION",
             "NO_DOCS": "True"})
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"LiteLLM exited; see {workdir / 'litellm.log'}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/liveliness", timeout=2).is_success:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.terminate()
    raise RuntimeError(f"LiteLLM did not start; see {workdir / 'litellm.log'}")
