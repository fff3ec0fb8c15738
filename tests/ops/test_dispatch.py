"""ssmkit.ops._dispatch: tiers found from their own declarations, "auto" against a name, the "cpu"
alias, SSMKIT_BACKEND, a tier whose package is missing, the one-time fallback warning, clear errors.

Most checks run on a toy op package written to a temporary directory (real modules, imported and
read the way ssmkit's own ops are), so every case exists whatever this machine has installed; the
last ones check ssmkit's own ops."""

import importlib.util
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from ssmkit.ops import _dispatch

NUMBA = importlib.util.find_spec("numba") is not None
TOY = "ssmkit_toy_ops.scale"

TIERS = {
    "__init__.py": "",
    "reference.py": """
        from ssmkit.ops._dispatch import Backend
        BACKEND = Backend(priority=0, fallback=True)
        def scale(x, *, factor=2.0):
            return x * factor
    """,
    "fast.py": """
        import torch
        from ssmkit.ops._dispatch import Backend
        BACKEND = Backend(devices=("cpu",), dtypes=(torch.float32,), priority=20)
        def scale(x, *, factor=2.0):
            return x * factor + 0.0
    """,
    "interp.py": """
        import os
        from ssmkit.ops._dispatch import Backend
        BACKEND = Backend(devices=("meta",), priority=30)
        def unsupported_reason(*tensors):
            if any(t.device.type == "cpu" for t in tensors) and os.environ.get("TOY_INTERPRET") != "1":
                return "CPU tensors need TOY_INTERPRET=1"
            return None
        def scale(x, *, factor=2.0):
            return x * factor
    """,
    "needs_pkg.py": """
        import ssmkit_toy_absent_package
        from ssmkit.ops._dispatch import Backend
        BACKEND = Backend(priority=50)
        def scale(x, *, factor=2.0):
            return x
    """,
    "_helpers.py": "raise RuntimeError('a module starting with _ is not a tier and is never imported')\n",
}


@pytest.fixture(scope="module", autouse=True)
def toy_ops(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    for package, files in (("scale", TIERS), ("broken", {"__init__.py": "", "reference.py": "X = 1\n"})):
        d = root / "ssmkit_toy_ops" / package
        d.mkdir(parents=True)
        for name, text in files.items():
            (d / name).write_text(textwrap.dedent(text))
    (root / "ssmkit_toy_ops" / "__init__.py").write_text("")
    sys.path.insert(0, str(root))
    yield
    sys.path.remove(str(root))
    for name in [m for m in sys.modules if m.startswith("ssmkit_toy_ops")]:
        del sys.modules[name]


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.delenv("SSMKIT_BACKEND", raising=False)
    monkeypatch.delenv("TOY_INTERPRET", raising=False)
    monkeypatch.setattr(_dispatch, "_warned", set())


def test_tiers_are_the_modules_that_declare_themselves():
    assert _dispatch.tier_names(TOY) == ("fast", "interp", "needs_pkg", "reference")
    tiers = _dispatch.tiers(TOY)
    assert [t.name for t in tiers] == ["interp", "fast", "reference", "needs_pkg"]   # priority, missing last
    fast = next(t for t in tiers if t.name == "fast")
    assert fast.backend == _dispatch.Backend(devices=("cpu",), dtypes=(torch.float32,), priority=20)
    assert "ssmkit_toy_ops.scale._helpers" not in sys.modules


def test_a_module_without_a_declaration_is_an_error():
    with pytest.raises(TypeError, match=r"ssmkit_toy_ops.broken.reference must declare BACKEND = Backend"):
        _dispatch.tiers("ssmkit_toy_ops.broken")


def test_auto_takes_the_highest_priority_tier_that_serves_the_inputs():
    x = torch.ones(3)
    assert _dispatch.resolve(TOY, "auto", x).name == "fast"             # interp serves meta only
    assert _dispatch.resolve(TOY, "auto", x.to("meta")).name == "interp"
    choice = _dispatch.resolve(TOY, "auto", x)
    assert choice.auto and torch.equal(choice.fn(x, factor=3.0), 3 * x)


def test_a_fallback_after_a_refusal_warns_once_naming_the_reason():
    x = torch.ones(3, dtype=torch.float64)
    slow = r"using the slow reference path \(fast: .*supports float32, got float64"
    with pytest.warns(RuntimeWarning, match=slow):
        assert _dispatch.resolve(TOY, "auto", x).name == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _dispatch.resolve(TOY, "auto", x).name == "reference"


def test_a_name_runs_that_tier_or_says_why_not():
    x = torch.ones(3)
    choice = _dispatch.resolve(TOY, "reference", x)
    assert choice.name == "reference" and not choice.auto
    with pytest.raises(RuntimeError, match=r"scale: backend='fast' cannot run these inputs: .*got float64"):
        _dispatch.resolve(TOY, "fast", x.double())
    with pytest.raises(RuntimeError, match="runs on cpu tensors, got meta"):
        _dispatch.resolve(TOY, "fast", x.to("meta"))
    with pytest.raises(ValueError, match=r"backend must be one of \['auto', 'fast', 'interp', 'needs_pkg', "):
        _dispatch.resolve(TOY, "gpu", x)


def test_asked_by_name_a_tier_with_a_hook_judges_the_device_itself(monkeypatch):
    """As Triton's interpreter will: "auto" never takes interp for CPU tensors, its name may."""
    x = torch.ones(3)
    with pytest.raises(RuntimeError, match="CPU tensors need TOY_INTERPRET=1"):
        _dispatch.resolve(TOY, "interp", x)
    monkeypatch.setenv("TOY_INTERPRET", "1")
    assert _dispatch.resolve(TOY, "interp", x).name == "interp"
    assert _dispatch.resolve(TOY, "auto", x).name == "fast"


def test_a_tier_whose_package_is_missing_is_unavailable_with_the_reason():
    why = _dispatch.available_backends(TOY, torch.ones(3))
    missing = "ssmkit_toy_absent_package"
    assert why["needs_pkg"] == f"{missing} is not installed (pip install {missing})"
    assert why["fast"] is None and why["reference"] is None
    with pytest.raises(RuntimeError, match="backend='needs_pkg' cannot run .* is not installed"):
        _dispatch.resolve(TOY, "needs_pkg", torch.ones(3))


def test_environment_variable_replaces_auto(monkeypatch):
    x = torch.ones(3)
    monkeypatch.setenv("SSMKIT_BACKEND", "reference")
    choice = _dispatch.resolve(TOY, "auto", x)
    assert choice.name == "reference" and not choice.auto
    assert _dispatch.resolve(TOY, "fast", x).name == "fast"             # a name in the call wins
    monkeypatch.setenv("SSMKIT_BACKEND", "chunked")                      # a backend the toy op lacks
    assert _dispatch.resolve(TOY, "auto", x).name == "fast"
    monkeypatch.setenv("SSMKIT_BACKEND", "fast")
    with pytest.raises(RuntimeError, match=r"backend='fast' cannot run"):
        _dispatch.resolve(TOY, "auto", x.double())
    monkeypatch.setenv("SSMKIT_BACKEND", "warp")
    with pytest.raises(ValueError, match="environment variable SSMKIT_BACKEND must be one of"):
        _dispatch.resolve(TOY, "auto", x)


# ---- ssmkit's own ops -------------------------------------------------------------------------------

OPS = {
    "selective_scan": {"reference", "chunked", "numba"},
    "ssd": {"reference", "chunked", "numba"},
    "causal_conv1d": {"reference", "numba"},
    "parallel_scan": {"reference", "chunked", "numba"},
    "fft_conv": {"reference", "fft"},
}


@pytest.mark.parametrize("op", list(OPS))
def test_each_op_has_its_tiers_and_auto_picks_the_fast_one_on_cpu(op, monkeypatch):
    x = torch.randn(2, 3)
    assert set(_dispatch.available_backends(op, x)) >= OPS[op]
    without_numba = "chunked" if "chunked" in OPS[op] else "reference"
    fast = "fft" if op == "fft_conv" else "numba" if NUMBA else without_numba
    assert _dispatch.resolve(op, "auto", x).name == fast
    monkeypatch.setenv("SSMKIT_BACKEND", "reference")
    assert _dispatch.resolve(op, "auto", x).name == "reference"


@pytest.mark.skipif(not NUMBA, reason="numba is not installed")
def test_cpu_is_an_alias_of_numba(monkeypatch):
    x = torch.randn(2, 3)
    assert _dispatch.resolve("selective_scan", "cpu", x).name == "numba"
    monkeypatch.setenv("SSMKIT_BACKEND", "cpu")
    assert _dispatch.resolve("ssd", "auto", x).name == "numba"
    assert _dispatch.resolve("fft_conv", "auto", x).name == "fft"          # no numba tier: auto


@pytest.mark.skipif(not NUMBA, reason="numba is not installed")
def test_float64_falls_back_to_chunked_with_one_warning():
    x = torch.randn(2, 3, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match=r"using the slow chunked path \(numba: .*got float64"):
        assert _dispatch.resolve("selective_scan", "auto", x).name == "chunked"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _dispatch.resolve("selective_scan", "auto", x).name == "chunked"
    with pytest.raises(RuntimeError, match=r"selective_scan: backend='numba' cannot run .*float64"):
        _dispatch.resolve("selective_scan", "numba", x)


@pytest.mark.skipif(not NUMBA, reason="a tier that cannot be imported may serve any device: it warns")
def test_no_warning_where_no_faster_tier_serves_the_device():
    """On a device no fast tier declares (meta stands in for CUDA until a GPU tier exists), "auto"
    takes chunked without a warning: nothing faster refused."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _dispatch.resolve("ssd", "auto", torch.zeros(2, device="meta")).name == "chunked"


def test_without_numba_every_op_runs_on_its_pytorch_tiers(tmp_path):
    """numba is an optional extra: with it not importable (None in sys.modules, as Python reports a
    missing package), the numba tiers are unavailable with the reason, "auto" warns once and runs
    chunked or reference, and the results match the oracle."""
    script = textwrap.dedent("""
        import sys, warnings
        sys.modules["numba"] = None                      # import numba -> ModuleNotFoundError
        import torch
        from ssmkit.ops import causal_conv1d, selective_scan
        from ssmkit.ops._dispatch import available_backends
        x = torch.randn(1, 4, 30)
        why = available_backends("selective_scan", x)["numba"]
        assert why.startswith("numba is not installed"), why
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            y = causal_conv1d(x, torch.randn(4, 3), activation="silu")
            causal_conv1d(x, torch.randn(4, 3))
        assert len(caught) == 1 and "numba is not installed" in str(caught[0].message), caught
        ref = causal_conv1d(x, torch.ones(4, 3), backend="reference")
        assert torch.equal(causal_conv1d(x, torch.ones(4, 3)), ref)
        u, A, B = torch.randn(1, 4, 30), -torch.rand(4, 2), torch.randn(1, 2, 30)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = selective_scan(u, u.abs(), A, B, B)
        assert torch.allclose(out, selective_scan(u, u.abs(), A, B, B, backend="reference"), atol=1e-5)
        assert "numba" not in sys.modules or sys.modules["numba"] is None
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
