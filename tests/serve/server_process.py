"""A real `ssmkit serve` process for tests: a tiny random model saved with save_pretrained and a byte
tokenizer, the server started as a subprocess on a free loopback port, stopped (or SIGKILLed) by the test."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import torch

import ssmkit
from ssmkit.training.tokenizer import ByteTokenizer

KEYS = ("key-one", "key-two")
PRINTABLE = list(range(32, 127))


def tiny_model(
    seed: int = 0, dtype=torch.float32, layers: str = "mamba2", d_model: int = 32, n_layer: int = 2
) -> ssmkit.SSMForCausalLM:
    """A random model (2 layers of width 32 by default) whose greedy replies are printable ASCII: the
    head's rows for other bytes are zero, so one of 95 random printable logits is the largest. Slow
    decay (small A) and large steps (dt) give it a long memory, so earlier turns change later replies."""
    torch.manual_seed(seed)
    mamba2 = {
        "d_state": 16,
        "headdim": 16,
        "chunk_size": 16,
        "A_init_range": (0.01, 0.1),
        "dt_min": 0.05,
        "dt_max": 0.5,
    }
    cfg = ssmkit.SSMConfig(
        d_model=d_model,
        n_layer=n_layer,
        vocab_size=256,
        layers=layers,
        tie_embeddings=False,
        n_head=2,
        layer_kwargs={"mamba2": mamba2},
    )
    model = ssmkit.SSMForCausalLM(cfg).to(dtype).eval()
    with torch.no_grad():
        keep = torch.zeros(model.lm_head.weight.shape[0], 1, dtype=dtype)
        keep[PRINTABLE] = 1.0
        model.lm_head.weight.mul_(keep * 40)
    return model


def make_model_dir(path, seed: int = 0, **model_kw) -> str:
    """A model directory as `ssmkit serve` takes it: `tiny_model(seed, **model_kw)` and a byte tokenizer."""
    path = os.fspath(path)
    tiny_model(seed, **model_kw).save_pretrained(path)
    ByteTokenizer().save(path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`ssmkit serve` on 127.0.0.1:<free port>; `start()` waits until /health answers."""

    def __init__(self, model_dir: str, db: str, api_keys=KEYS, settings=()):
        self.model_dir, self.db, self.api_keys, self.settings = model_dir, db, list(api_keys), list(settings)
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.log = f"{db}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> ServerProcess:
        import httpx

        self.port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "ssmkit",
            "serve",
            self.model_dir,
            "--port",
            str(self.port),
            "--db",
            self.db,
        ]
        for k in self.api_keys:
            cmd += ["--api-key", k]
        for s in self.settings:
            cmd += ["--set", s]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ssmkit serve exited with {self.proc.returncode}: {self.read_log()}")
            try:
                if httpx.get(self.url + "/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"ssmkit serve did not answer within {timeout} s: {self.read_log()}")

    def read_log(self) -> str:
        with open(self.log, errors="replace") as f:
            return f.read()[-3000:]

    def kill(self) -> None:
        """SIGKILL: no clean-up at all, as a crash."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def client(self, key: str | None = KEYS[0]):
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key=key or "none", max_retries=0, timeout=60.0)

    def http(self, key: str | None = KEYS[0]):
        import httpx

        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60.0)
