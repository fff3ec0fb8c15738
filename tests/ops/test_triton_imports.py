"""Triton is optional and lazy: `import ssmkit`, the dispatcher reading every tier's declaration and the
CPU paths (ops, layers' forward, backward and step, generate) never import it."""

import subprocess
import sys
import textwrap


def test_cpu_paths_never_import_triton():
    code = textwrap.dedent("""
        import sys
        import torch
        import ssmkit
        from ssmkit.ops import _dispatch, causal_conv1d, selective_scan, ssd
        for op in ("causal_conv1d", "selective_scan", "ssd"):
            _dispatch.available_backends(op, torch.zeros(1))       # imports every tier module
        cfg = ssmkit.SSMConfig(d_model=16, n_layer=2, vocab_size=32, layers="mamba,mamba2",
                               layer_kwargs={"mamba2": {"d_state": 8, "headdim": 8, "chunk_size": 8}})
        model = ssmkit.SSMForCausalLM(cfg)
        ids = torch.randint(0, 32, (2, 12))
        model(ids).logits.sum().backward()
        model.generate(ids, max_new_tokens=3)
        assert "triton" not in sys.modules, sorted(m for m in sys.modules if "triton" in m)
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"})
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
