"""Files that are never half-written, never silently corrupt, and readable by whoever the umask allows.

    write_atomic(path, write)        write through `.<name>.tmp-<pid>` beside `path`, fsync, rename
    digest(tree)                     sha256 of tensors (names, dtypes, shapes, bytes) and plain values
    save_safetensors(path, tensors, metadata)        atomic, with the digest in the metadata
    load_safetensors(path, what) -> tensors, meta    checks the digest; clear errors
    read_safetensors(path) -> tensors, meta          the reader: plain reads into fresh tensors (the
                                     file is not mapped, so its pages never count as this process's)

Every ssmkit file (model weights, States, training checkpoints, corpus caches) goes through here:
- Atomic: a crash leaves the previous file or the new one. Temporary files of processes that no
  longer run (a killed save) are removed by the next write of the same file.
- Checked: the digest of the content is stored with it and verified on load, so flipped bytes give
  one error naming the file instead of garbage. Files written before digests existed load with a
  one-time warning that they are unverified.
- Permissions follow the umask (safetensors' own writer creates 0600 files).
- A missing file, an unreadable one ("permission denied") and a damaged one are told apart.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import struct
import warnings
from collections.abc import Callable

import torch

DIGEST_KEY = "ssmkit_sha256"
_warned_unverified: set[str] = set()


# ---- atomic writes ---------------------------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temps(path: str) -> None:
    """Delete `.<name>.tmp-<pid>` files beside `path` whose writer process is gone."""
    directory, name = os.path.split(os.path.abspath(path))
    for tmp in glob.glob(os.path.join(glob.escape(directory), f".{glob.escape(name)}.tmp-*")):
        pid = tmp.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            try:
                os.remove(tmp)
            except OSError:
                pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """`write(tmp_path)` writes the whole file; then it is flushed, given the umask's permissions and
    renamed over `path`. On any error the temporary file is removed and `path` is untouched."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    remove_stale_temps(path)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    write_atomic(path, write)


# ---- digests ----------------------------------------------------------------------------------------
def _update(h, obj) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    elif isinstance(obj, dict):
        h.update(b"{")
        for k, v in obj.items():
            h.update(repr(k).encode())
            _update(h, v)
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[" if isinstance(obj, list) else b"(")
        for v in obj:
            _update(h, v)
        h.update(b"]")
    else:
        h.update(repr(obj).encode())


def digest(tree) -> str:
    """sha256 (hex) of a nest of dicts, lists and tuples of tensors and plain values, in order."""
    h = hashlib.sha256()
    _update(h, tree)
    return h.hexdigest()


def check_digest(stored: str | None, tree, what: str) -> None:
    """Raise if the digest stored with a file does not match its content; warn once if there is none."""
    if stored is None:
        if what not in _warned_unverified:
            _warned_unverified.add(what)
            msg = f"{what} has no checksum (written by an older ssmkit): loaded unverified"
            warnings.warn(msg, stacklevel=3)
        return
    if digest(tree) != stored:
        raise ValueError(
            f"{what} is corrupt: its content does not match the checksum stored with it "
            "(damaged on disk or in transfer); restore it from a good copy or write it again"
        )


# ---- opening ----------------------------------------------------------------------------------------
def check_readable(path: str, what: str) -> None:
    """FileNotFoundError / PermissionError that name the file and say which it is."""
    try:
        open(path, "rb").close()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what}: no file at {path}") from None
    except PermissionError:  # the file, or a directory above it, is not readable by this user
        raise PermissionError(f"{what}: permission denied reading {path}") from None


# ---- safetensors ------------------------------------------------------------------------------------
def save_safetensors(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]
) -> str:
    """Write tensors atomically with their digest in the metadata; returns the digest."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    d = digest(dict(sorted(tensors.items())))
    write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata={**metadata, DIGEST_KEY: d}))
    return d


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """The bytes of a safetensors file with the digest in its metadata (for database blobs)."""
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return save(tensors, metadata={**metadata, DIGEST_KEY: digest(dict(sorted(tensors.items())))})


def _check_format(meta: dict, fmt: str | None, what: str) -> None:
    if fmt is not None and meta.get("format") != fmt:
        name = fmt.replace(".", " ")  # "ssmkit.State" -> "ssmkit State"
        raise ValueError(f"{what} is a safetensors file but not an {name} (no {name} header)")


def load_safetensors(
    path: str | os.PathLike, what: str, fmt: str | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file, its digest checked; clear errors naming `what`.
    `fmt`: the "format" its metadata must carry."""
    path = os.fspath(path)
    check_readable(path, what)
    try:
        tensors, meta = read_safetensors(path)
    except ValueError as e:
        raise ValueError(f"cannot read {what} {path} (truncated or not a safetensors file?): {e}") from e
    _check_format(meta, fmt, f"{what} {path}")
    check_digest(meta.get(DIGEST_KEY), dict(sorted(tensors.items())), f"{what} {path}")
    return tensors, meta


SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file; a truncated or malformed file raises a ValueError."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        try:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                raise ValueError(f"header of {n} bytes in a file of {size}")
            header = json.loads(f.read(n))
        except (struct.error, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not a safetensors file ({e})") from e
        meta = header.pop("__metadata__", None) or {}
        tensors = {}
        for name, info in header.items():
            dtype = SAFETENSORS_DTYPES.get(info.get("dtype"))
            if dtype is None:
                raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info.get('dtype')!r}")
            start, end = info["data_offsets"]
            t = torch.empty(info["shape"], dtype=dtype)
            nbytes = t.numel() * t.element_size()
            if end - start != nbytes or 8 + n + end > size:
                raise ValueError(f"{path}: tensor {name!r} lies outside the file (truncated?)")
            f.seek(8 + n + start)
            if nbytes and f.readinto(t.reshape(-1).view(torch.uint8).numpy()) != nbytes:
                raise ValueError(f"{path}: tensor {name!r} is cut short (truncated file?)")
            tensors[name] = t
    return tensors, meta


def loads_safetensors(
    data: bytes, what: str, fmt: str | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """As load_safetensors, from bytes."""
    import json

    from safetensors.torch import load

    try:
        n = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8 : 8 + n]).get("__metadata__") or {}
    except Exception as e:  # too short, or not JSON after the length
        raise ValueError(f"cannot read {what} (truncated or not a safetensors file?): {e}") from e
    _check_format(meta, fmt, what)
    try:
        tensors = load(data)
    except Exception as e:  # safetensors' own error type on damaged bytes
        raise ValueError(f"cannot read {what} (truncated or not a safetensors file?): {e}") from e
    check_digest(meta.get(DIGEST_KEY), dict(sorted(tensors.items())), what)
    return tensors, meta
