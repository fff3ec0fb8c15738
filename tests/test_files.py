"""ssmkit._files: atomic writes, checksums, permissions and the errors for missing, unreadable and
damaged files; and every file kind that goes through it (State, model directory, training checkpoint)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
import torch

from ssmkit import SSMForCausalLM, State
from ssmkit._files import digest, load_safetensors, remove_stale_temps, save_safetensors, write_bytes_atomic
from ssmkit.training.checkpoint import read_checkpoint, save_checkpoint
from ssmkit.training.optim import build_optimizer, build_scheduler
from tests.models.tiny import tiny_lm
from tests.training.test_training import TinyLM


def flip(path, n: int, from_end: int = 64) -> None:
    """Invert n bytes of the file, `from_end` bytes before its end (inside the tensor data)."""
    data = bytearray(open(path, "rb").read())
    start = len(data) - from_end
    for i in range(start, start + n):
        data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))


def test_digest_sees_values_dtypes_shapes_and_order():
    a = {"x": torch.arange(6.0), "y": [1, 2.5, "s"]}
    assert digest(a) == digest({"x": torch.arange(6.0), "y": [1, 2.5, "s"]})
    assert digest(a) != digest({"x": torch.arange(6.0).view(2, 3), "y": [1, 2.5, "s"]})
    assert digest(a) != digest({"x": torch.arange(6.0).double(), "y": [1, 2.5, "s"]})
    b = torch.arange(6.0)
    b[3] = 3.0000002
    assert digest(a) != digest({"x": b, "y": [1, 2.5, "s"]})
    assert digest(a) != digest({"y": [1, 2.5, "s"], "x": torch.arange(6.0)})


def test_corrupted_safetensors_is_one_clear_error(tmp_path):
    path = tmp_path / "t.safetensors"
    save_safetensors(path, {"w": torch.randn(64, 64)}, {"format": "pt"})
    assert load_safetensors(path, "weights")[0]["w"].shape == (64, 64)
    flip(path, 16)
    with pytest.raises(ValueError, match=r"weights .*t\.safetensors is corrupt"):
        load_safetensors(path, "weights")


def test_file_without_checksum_loads_with_a_warning(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "old.safetensors"
    save_file({"w": torch.ones(3)}, str(path))
    with pytest.warns(UserWarning, match="no checksum.*unverified"):
        tensors, _ = load_safetensors(path, "old weights")
    assert torch.equal(tensors["w"], torch.ones(3))


def test_files_follow_the_umask_and_unreadable_says_permission_denied(tmp_path):
    old = os.umask(0o022)
    try:
        save_safetensors(tmp_path / "w.safetensors", {"w": torch.ones(2)}, {})
        write_bytes_atomic(tmp_path / "b.bin", b"abc")
    finally:
        os.umask(old)
    for name in ("w.safetensors", "b.bin"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644, name


def test_unreadable_file_is_permission_denied_not_missing(tmp_path):
    """Another user's 0600 file (as root: read it as 'nobody' in a child process)."""
    path = tmp_path / "s.safetensors"
    if os.geteuid() != 0:
        save_safetensors(path, {"w": torch.ones(2)}, {})
        os.chmod(path, 0)
        with pytest.raises(PermissionError, match="permission denied"):
            load_safetensors(path, "weights")
        return
    save_safetensors(path, {"w": torch.ones(2)}, {})
    os.chmod(path, 0o600)
    os.chmod(tmp_path, 0o755)
    code = (
        "import os, sys, safetensors, safetensors.torch\n"
        "from ssmkit._files import load_safetensors\n"
        "os.setgid(65534); os.setuid(65534)  # everything imported first: nobody cannot read /root\n"
        "try:\n    load_safetensors(sys.argv[1], 'weights')\n"
        "except PermissionError as e:\n    print('PERM', e)\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert "PERM weights: permission denied" in r.stdout, r.stdout + r.stderr


def test_stale_temporary_files_of_dead_writers_are_removed(tmp_path):
    target = tmp_path / "checkpoint.pt"
    code = "import os; print(os.getpid())"
    dead = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    stale = tmp_path / f".checkpoint.pt.tmp-{dead.stdout.strip()}"
    mine = tmp_path / f".checkpoint.pt.tmp-{os.getppid()}"  # a live process's: kept
    stale.write_bytes(b"x" * 100)
    mine.write_bytes(b"y")
    remove_stale_temps(str(target))
    assert not stale.exists() and mine.exists()


# ---- the file kinds --------------------------------------------------------------------------------
def test_flipped_bytes_in_a_state_are_refused(tmp_path):
    model = tiny_lm("mamba2,attention")
    st = model.init_state(2)
    model(torch.randint(0, 37, (2, 9)), state=st)
    st.save(tmp_path / "s.safetensors")
    flip(tmp_path / "s.safetensors", 16)
    with pytest.raises(ValueError, match="State file .*corrupt"):
        State.load(tmp_path / "s.safetensors")


def test_flipped_bytes_in_model_weights_are_refused(tmp_path):
    tiny_lm("mamba").save_pretrained(tmp_path)
    flip(tmp_path / "model.safetensors", 64, from_end=200)
    with pytest.raises(ValueError, match="model weights .*corrupt"):
        SSMForCausalLM.from_pretrained(tmp_path)


def test_kill_between_weights_and_config_is_refused_not_silently_loaded(tmp_path, monkeypatch):
    """A save that dies after the weights and before config.json leaves a pair that does not load."""
    tiny_lm("mamba").save_pretrained(tmp_path)
    import ssmkit.models.checkpoint as ck

    real = ck.write_bytes_atomic

    def die(path, data):
        if str(path).endswith("config.json"):
            raise KeyboardInterrupt("killed between the two files")
        real(path, data)

    monkeypatch.setattr(ck, "write_bytes_atomic", die)
    with pytest.raises(KeyboardInterrupt):
        tiny_lm("mamba").save_pretrained(tmp_path)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="come from different saves"):
        SSMForCausalLM.from_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]  # no temporary left
    tiny_lm("mamba").save_pretrained(tmp_path)  # saving again heals it
    SSMForCausalLM.from_pretrained(tmp_path)
    assert "ssmkit_weights_sha256" in json.loads((tmp_path / "config.json").read_text())


def test_flipped_bytes_in_a_training_checkpoint_are_refused(tmp_path):
    model = TinyLM()
    opt = build_optimizer(model, 1e-3)
    save_checkpoint(str(tmp_path / "c.pt"), model, opt, build_scheduler(opt, 1, 10, 0.1), step=3)
    assert read_checkpoint(str(tmp_path / "c.pt"))["step"] == 3
    flip(tmp_path / "c.pt", 16, from_end=2000)
    with pytest.raises(ValueError, match="training checkpoint .*c.pt"):
        read_checkpoint(str(tmp_path / "c.pt"))
