"""Every Triton kernel compiles for an H100 (sm_90, bf16) without a GPU: front end, TTGIR, PTX, cubin.

The interpreter tests check the numbers but never run Triton's compiler, which rejects more (types
of loop-carried values, scalar branches, constexpr-pruned code). ``triton.compile`` with an explicit
``GPUTarget`` needs no driver, so the whole pipeline down to ``ptxas`` runs here, in a fresh process
(the other Triton tests switch this one to the interpreter).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("triton")

SCRIPT = textwrap.dedent(
    """
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from mcrnn.ops.linear.triton import cached, chunk, grm

    INT_ARGS = {"NC", "T"}
    INT_POINTERS = {"table", "seg_ids", "offsets", "idx"}
    FP32_POINTERS = {"states", "dstates", "dg", "lse", "delta", "online_logit"}

    def compile_sm90(kernel, io, **meta):
        signature = {}
        for param in kernel.params:
            name = param.name
            if param.is_constexpr or meta.get(name, 0) is None:
                signature[name] = "constexpr"
            elif name in INT_ARGS:
                signature[name] = "i32"
            elif name in INT_POINTERS:
                signature[name] = "*i32"
            else:
                signature[name] = "*fp32" if name in FP32_POINTERS else "*" + io
        source = ASTSource(fn=kernel, signature=signature, constexprs=meta)
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
        assert "cubin" in compiled.asm, kernel.__name__

    def compile_all(io, dot, prec, variants):
        shape = dict(H=16, K=64, V=64, BT=64, DOT=dot, PREC=prec)
        for use_g in variants["decay"]:
            meta = dict(shape, USE_G=use_g, **({} if use_g else {"g": None}))
            compile_sm90(chunk._fwd_h, io, N=8, BK=32, BV=32, RESET=True, **meta)
            compile_sm90(chunk._fwd_o, io, BV=64, **meta)
            compile_sm90(chunk._bwd_dh, io, N=8, BK=32, BV=32, RESET=False, HAS_DS=True, **meta)
            compile_sm90(chunk._bwd_dqkv, io, **meta, **({} if use_g else {"dg": None}))
        pointers = {"gates", "idx", "w", "u", "contexts", "lse", "delta", "dgates", "dw", "du", "dcontexts"}
        used = {
            cached.DENSE: {"gates", "dgates"},
            cached.SPARSE: {"idx", "w", "dw"},
            cached.SOFTMAX: {"u", "contexts", "lse", "delta", "du", "dcontexts"},
        }
        for mode in variants["modes"]:
            top_k = 4 if mode == cached.SPARSE else 1
            meta = dict(shape, N=16, TOPK=top_k, KS=top_k, MODE=mode)
            for kernel, extra in ((cached._read_fwd, {"BV": 64}), (cached._read_bwd_dq, {}),
                                  (cached._read_bwd_dstates, {})):
                absent = {p.name: None for p in kernel.params if p.name in pointers - used[mode]}
                compile_sm90(kernel, io, **meta, **extra, **absent)
        compile_sm90(grm._grm_lse, io, H=16, K=64, N=16, BT=64)

    # bf16 with decay and every gate mode (~15 compilations; a cold cache takes most of a minute)
    modes = (cached.DENSE, cached.SPARSE, cached.SOFTMAX)
    compile_all("bf16", tl.bfloat16, "tf32", {"decay": (True,), "modes": modes})
    print("compiled")
    """
)


@pytest.mark.slow
def test_kernels_compile_for_sm90():
    pytest.importorskip("triton.backends.nvidia.compiler")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, cwd=root, timeout=300
    )
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]
