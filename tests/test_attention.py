"""d4k::attention (ops/attention.py, ops/_attention_triton.py) against a float64 softmax(q k^T) v, and the
VAE attention processor (vae/attention.py) against diffusers' own: the decode does not change."""
import math

import pytest
import torch
import torch.nn.functional as F

from d4k_kernels import backend
from d4k_kernels.ops import _attention_triton as AT
from d4k_kernels.ops import attention as attention_mod
from d4k_kernels.ops.attention import attention

_TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3, torch.float64: 1e-10}


def _reference(q, k, v, scale=None):
    """Plain float64 softmax(q k^T * scale) v on the CPU, the whole score matrix at once."""
    q, k, v = (t.detach().cpu().double() for t in (q, k, v))
    s = q @ k.transpose(-1, -2) * (1.0 / math.sqrt(q.shape[-1]) if scale is None else scale)
    return torch.softmax(s, dim=-1) @ v


def _qkv(B, H, M, N, D, dtype, dev):
    q = torch.randn(B, H, M, D, dtype=torch.float64)
    k = torch.randn(B, H, N, D, dtype=torch.float64)
    v = torch.randn(B, H, N, D, dtype=torch.float64)
    return tuple(t.to(dev, dtype) for t in (q, k, v))


def _check(out, ref, dtype):
    tol = _TOL[dtype]
    torch.testing.assert_close(out.cpu().double(), ref, rtol=tol, atol=tol)


# ---------------------------------------------------------------------------------------------
# the op against float64, on every (backend, device) pair
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("D", [64, 256, 512])
@pytest.mark.parametrize("B,H,M,N", [(1, 2, 70, 100), (2, 1, 33, 200)])
def test_matches_float64(backend_device, seed, dtype, D, B, H, M, N):
    """Ragged M and N (no multiple of any block), every dtype, the head dims the VAEs and DiTs use."""
    _, dev = backend_device
    q, k, v = _qkv(B, H, M, N, D, dtype, dev)
    out = attention(q, k, v)
    assert out.shape == (B, H, M, D) and out.dtype == dtype and out.is_contiguous()
    _check(out, _reference(q, k, v), dtype)


def test_float64_runs_the_torch_path(backend_device, seed):
    _, dev = backend_device
    q, k, v = _qkv(1, 2, 40, 50, 96, torch.float64, dev)
    _check(attention(q, k, v), _reference(q, k, v), torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_contiguous_inputs(backend_device, seed, dtype):
    """The processor's layout (transposed views of (B, N, heads * D) projections), a fused qkv buffer,
    and a head dim with a stride of 2: each read in place, the same result as contiguous copies."""
    _, dev = backend_device
    B, H, N, D = 2, 2, 75, 64
    x = torch.randn(B, N, 3 * H * D, dtype=torch.float64).to(dev, dtype)
    q, k, v = (t.view(B, N, H, D).transpose(1, 2) for t in x.split(H * D, dim=-1))
    assert not q.is_contiguous()
    _check(attention(q, k, v), _reference(q, k, v), dtype)
    wide = torch.randn(B, H, N, 2 * D, dtype=torch.float64).to(dev, dtype)
    v2 = wide[..., ::2]
    assert v2.stride(-1) == 2
    _check(attention(q, k, v2), _reference(q, k, v2), dtype)


@pytest.mark.parametrize("M,N,D", [(1, 1, 64), (1, 130, 512), (65, 3, 80), (40, 40, 1), (17, 21, 320)])
def test_odd_sizes_and_cross_attention(backend_device, seed, M, N, D):
    """One query, one key, M != N, and head dims that are no power of two (padded with zeros)."""
    _, dev = backend_device
    q, k, v = _qkv(1, 1, M, N, D, torch.float32, dev)
    _check(attention(q, k, v), _reference(q, k, v), torch.float32)


def test_scale_and_large_scores(backend_device, seed):
    """An explicit scale, and scores in the hundreds (the online max must keep exp2 finite)."""
    _, dev = backend_device
    q, k, v = _qkv(1, 2, 50, 90, 64, torch.float32, dev)
    _check(attention(q, k, v, scale=0.3), _reference(q, k, v, 0.3), torch.float32)
    big = attention(q * 8, k * 8, v, scale=1.0)   # scores ~ +-500: exp without the running max overflows
    assert torch.isfinite(big).all()
    # fp32 scores of that size carry ~1e-3 absolute rounding (sqrt(D) * 2^-24 * |q_i k_i| ~ 64), so the
    # softmax weights, and the output, ~1e-3 relative
    torch.testing.assert_close(big.cpu().double(), _reference(q * 8, k * 8, v, 1.0), rtol=5e-3, atol=5e-3)


def test_empty_queries(backend_device):
    _, dev = backend_device
    q, k, v = _qkv(1, 1, 0, 7, 64, torch.float32, dev)
    assert attention(q, k, v).shape == (1, 1, 0, 64)


# ---------------------------------------------------------------------------------------------
# the GPU tilings, run by the interpreter
# ---------------------------------------------------------------------------------------------
@pytest.mark.skipif(not (backend.HAS_TRITON and backend.interpreter_enabled()), reason="needs the Triton interpreter")
@pytest.mark.parametrize("key", sorted(AT._GPU_CONFIGS, key=lambda k: (k[0], k[1])), ids=str)
def test_gpu_configs_under_the_interpreter(seed, key):
    """Every GPU configuration (the output split over programs at D = 512, the fp32 head-dim chunks)
    computes the same attention, at its full head dim and at a ragged one padded into the same block."""
    block_d, half = key
    dtype = torch.bfloat16 if half else torch.float32
    cfg = AT._GPU_CONFIGS[key]
    for D in (block_d, block_d - 24):
        q, k, v = _qkv(1, 1, cfg.block_m + 5, 2 * cfg.block_n + 3, D, dtype, torch.device("cpu"))
        out = AT.attention_triton(q, k, v, 1.0 / math.sqrt(D), config=cfg)
        _check(out, _reference(q, k, v), dtype)


def test_config_for_covers_every_head_dim():
    dev = torch.device("cuda")
    for D in (1, 16, 64, 65, 128, 200, 256, 400, 512):
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            cfg = AT.config_for(D, dtype, dev)
            assert (max(16, 1 << (D - 1).bit_length()) // cfg.split) >= 16


# ---------------------------------------------------------------------------------------------
# the torch path: bounded memory
# ---------------------------------------------------------------------------------------------
def test_torch_path_chunks_the_queries(monkeypatch, seed):
    """With a small score budget the torch path runs SDPA on chunks of query rows: same result; the
    VAE mid-block at a 512^2 latent gets 256-row chunks (256 MiB of scores, not the 256 GiB matrix)."""
    q, k, v = _qkv(2, 2, 100, 64, 32, torch.float32, torch.device("cpu"))
    whole = attention_mod._attention_torch(q, k, v, 0.2)
    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(attention_mod.F, "scaled_dot_product_attention",
                        lambda *a, **kw: calls.append(a[0].shape[2]) or real(*a, **kw))
    monkeypatch.setattr(attention_mod, "SCORE_BYTES", 4 * 2 * 2 * 64 * 30)   # 30 query rows a chunk
    chunked = attention_mod._attention_torch(q, k, v, 0.2)
    assert calls == [30, 30, 30, 10]
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-6)
    monkeypatch.undo()
    big_q = torch.empty(1, 1, 262144, 512, device="meta")
    assert attention_mod._chunk_rows(big_q, big_q) == 256


# ---------------------------------------------------------------------------------------------
# checks, autograd, registration
# ---------------------------------------------------------------------------------------------
def test_bad_inputs_name_the_value():
    q = torch.randn(1, 2, 8, 16)
    with pytest.raises(ValueError, match="4 dimensions"):
        attention(q[0], q, q)
    with pytest.raises(TypeError, match="dtype"):
        attention(q, q.half(), q)
    with pytest.raises(TypeError, match="int64"):
        attention(q.long(), q.long(), q.long())
    with pytest.raises(ValueError, match="shape"):
        attention(q, q, q[:, :, :4])
    with pytest.raises(ValueError, match="batch, heads"):
        attention(q, q[:, :1], q[:, :1])
    with pytest.raises(ValueError, match="head dim"):
        attention(q, q[..., :8], q[..., :8])
    with pytest.raises(ValueError, match="at least one key"):
        attention(q, q[:, :, :0], q[:, :, :0])
    with pytest.raises(ValueError, match="scale"):
        attention(q, q, q, scale=float("nan"))
    with pytest.raises(ValueError, match="scale"):
        attention(q, q, q, scale=True)
    with pytest.raises(TypeError, match="torch.Tensor"):
        attention(q.numpy(), q, q)


def test_gradient_takes_the_differentiable_path(backend_device, seed):
    _, dev = backend_device
    q, k, v = (t.requires_grad_() for t in _qkv(1, 2, 20, 30, 64, torch.float64, dev))
    attention(q, k, v).square().sum().backward()
    qr, kr, vr = (t.detach().clone().requires_grad_() for t in (q, k, v))
    F.scaled_dot_product_attention(qr, kr, vr).square().sum().backward()
    for a, b in ((q, qr), (k, kr), (v, vr)):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-10)


def test_first_use_self_check_falls_back_once(monkeypatch):
    """A kernel that disagrees with the torch path (or fails to compile) for a configuration warns once
    and is not used for it again; a correct one passes. Checked with stand-in kernels on the CPU."""
    import warnings

    monkeypatch.setattr(attention_mod, "_CHECKED", {})
    dev = torch.device("cpu")
    good = lambda q, k, v, s: attention_mod._attention_torch(q, k, v, s)  # noqa: E731
    bad = lambda q, k, v, s: good(q, k, v, s) + 0.1  # noqa: E731

    def broken(q, k, v, s):
        raise RuntimeError("PassManager::run failed")

    assert attention_mod.self_check(dev, torch.float32, 64, kernel=good)
    with pytest.warns(RuntimeWarning, match=r"first-use check.*head dim 128: max abs error 0\.1"):
        assert not attention_mod.self_check(dev, torch.float32, 128, kernel=bad)
    with pytest.warns(RuntimeWarning, match="PassManager::run failed"):
        assert not attention_mod.self_check(dev, torch.bfloat16, 64, kernel=broken)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # remembered: no second check, no second warning
        assert not attention_mod.self_check(dev, torch.float32, 128, kernel=good)


def test_opcheck(backend_device, seed):
    """torch.library.opcheck: schema, fake tensor, autograd registration, AOT dispatch."""
    _, dev = backend_device
    for dtype in (torch.float32, torch.bfloat16):
        q, k, v = _qkv(1, 2, 33, 40, 64, dtype, dev)
        torch.library.opcheck(torch.ops.d4k.attention.default, (q, k, v, 0.125))
        torch.library.opcheck(torch.ops.d4k.attention.default, (q.transpose(1, 2).contiguous().transpose(1, 2), k, v, 0.5))


def test_backend_table_has_the_op():
    assert backend.choose("attention", torch.empty(1, dtype=torch.float64)) == "torch"
    with backend.prefer("cpu"):
        assert backend.choose("attention", torch.empty(1)) == "torch"


# ---------------------------------------------------------------------------------------------
# the kernel compiles for an H100 / H200 (sm_90) without a GPU; no spills
# ---------------------------------------------------------------------------------------------
_COMPILE_SCRIPT = r"""
import os, subprocess, tempfile
import torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from d4k_kernels.ops import _attention_triton as AT
kern = AT._attn_fwd_kernel
names = kern.arg_names
cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
ptr_type = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32"}
cases = [(D, dt) for D in (64, 128, 256, 512) for dt in (torch.bfloat16, torch.float32)] + [(512, torch.float16)]
for D, dt in cases:
    cfg = AT.config_for(D, dt, torch.device("cuda"))
    const = dict(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=D, BLOCK_DV=D // cfg.split,
                 CHUNK_D=cfg.chunk_d or D, EVEN_D=True, IEEE=dt == torch.float32,
                 sqd=1, skd=1, svd=1, sod=1)   # unit strides are specialised at launch, as on a GPU
    sig = {a: "constexpr" if a in const else ptr_type[dt] if a.endswith("_ptr") else
           "fp32" if a == "qk_scale" else "i32" for a in names}
    aligned = [a for a in names if a.endswith("_ptr") or (a[0] == "s" and a[-1] in "bhmn")]
    attrs = {(names.index(a),): [["tt.divisibility", 16]] for a in aligned}
    k = triton.compile(ASTSource(fn=kern, signature=sig, constexprs={(names.index(a),): v for a, v in const.items()},
                                 attrs=attrs),
                       target=GPUTarget("cuda", 90, 32), options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
    assert k.metadata.shared <= 232448, (D, dt, cfg, k.metadata.shared)   # 227 KB a block on sm_90
    usage = ""
    if os.path.exists(cuobjdump):
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(k.asm["cubin"]); f.flush()
            out = subprocess.run([cuobjdump, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
        usage = " ".join(w for line in out.splitlines() if "REG:" in line for w in line.split() if w[:4] in ("REG:", "STAC"))
        assert "STACK:0" in usage, (D, dt, cfg, usage)   # no spills
    print(D, str(dt).replace("torch.", ""), tuple(cfg), "shared", k.metadata.shared, usage)
print("compiled")
"""


@pytest.mark.skipif(not backend.HAS_TRITON, reason="needs triton")
def test_kernel_compiles_for_sm90():
    """Every GPU configuration (D = 64, 128, 256, 512; bf16, fp32; fp16 at 512) compiles for sm_90 in a
    process without the interpreter, fits the 227 KB of shared memory a block may use, and does not
    spill (the compiled kernel's stack frame, read with Triton's cuobjdump)."""
    from gpu_compile import assert_compiles_for_sm90

    r = assert_compiles_for_sm90(_COMPILE_SCRIPT, timeout=600)
    print(r.stdout)


# ---------------------------------------------------------------------------------------------
# on a GPU
# ---------------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("D", [64, 128, 256, 512])
def test_cuda_large_against_sdpa(seed, D, no_tf32):
    """Shapes with thousands of keys (many full blocks, then the tail): bf16 / fp16 against SDPA on the
    same inputs (its own rounding), fp32 against float64."""
    dev = torch.device("cuda")
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        q, k, v = _qkv(1, 2, 4099, 5003, D, dtype, dev)
        out = attention(q, k, v)
        if dtype == torch.float32:
            ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
            torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
        else:
            ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
            torch.testing.assert_close(out.float(), ref, rtol=_TOL[dtype], atol=_TOL[dtype])


# ---------------------------------------------------------------------------------------------
# the VAE processor: the decode does not change
# ---------------------------------------------------------------------------------------------
diffusers = pytest.importorskip("diffusers")
from diffusers import AutoencoderKL  # noqa: E402
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0  # noqa: E402

from d4k_kernels.vae import SCAutoencoderKL, tiled_decode  # noqa: E402
from d4k_kernels.vae import attention as vae_attention  # noqa: E402
from d4k_kernels.vae.attention import (  # noqa: E402
    FastVAEAttnProcessor, disable_fast_vae_attention, enable_fast_vae_attention, fast_vae_attention,
    is_fast_vae_attention_enabled)

# channels 32 / 64 and 8 groups: the mid-block attention is one head of dim 64 over every latent pixel
_CFG = dict(down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
            block_out_channels=[32, 64], layers_per_block=1, latent_channels=4, norm_num_groups=8,
            sample_size=32)


def _vae(cls=AutoencoderKL, **kw):
    """A tiny VAE with random weights, perturbed so that no layer keeps its initial values."""
    torch.manual_seed(torch.initial_seed() % 1000)
    m = cls(**_CFG, **kw).eval()
    flat = torch.nn.utils.parameters_to_vector(m.parameters())
    torch.nn.utils.vector_to_parameters(flat.detach() + 0.05 * torch.randn_like(flat), m.parameters())
    return m


def _close(out, ref):
    assert (out - ref).abs().max().item() <= 1e-4 * max(1.0, ref.abs().max().item())


@pytest.mark.parametrize("cls", [AutoencoderKL, SCAutoencoderKL])
def test_decode_and_encode_unchanged(backend_device, seed, cls):
    """A tiny random AutoencoderKL / SCAutoencoderKL: decode and encode with the processor == with
    diffusers' AttnProcessor2_0 (fp32, 1e-4), on the CPU path and through the kernel."""
    _, dev = backend_device
    vae = _vae(cls).to(dev)
    z = torch.randn(1, 4, 9, 11, device=dev)
    x = torch.randn(1, 3, 16, 20, device=dev)
    with torch.no_grad():
        ref, ref_enc = vae.decode(z).sample, vae.encode(x).latent_dist.mean
        enable_fast_vae_attention(vae)
        assert is_fast_vae_attention_enabled(vae)
        assert isinstance(vae.decoder.mid_block.attentions[0].processor, FastVAEAttnProcessor)
        out, enc = vae.decode(z).sample, vae.encode(x).latent_dist.mean
    _close(out, ref)
    _close(enc, ref_enc)


def test_the_processor_runs_the_op(monkeypatch, seed):
    vae = enable_fast_vae_attention(_vae())
    calls = []
    monkeypatch.setattr(vae_attention, "attention", lambda q, k, v: calls.append(tuple(q.shape)) or
                        F.scaled_dot_product_attention(q, k, v))
    with torch.no_grad():
        vae.decode(torch.randn(2, 4, 5, 6))
    assert calls == [(2, 1, 30, 64)]


def test_enable_disable_restore_the_previous_processors(seed):
    vae = _vae()
    attns = [vae.encoder.mid_block.attentions[0], vae.decoder.mid_block.attentions[0]]
    attns[0].set_processor(AttnProcessor())
    before = [a.processor for a in attns]
    assert enable_fast_vae_attention(vae) is vae
    enable_fast_vae_attention(vae)                 # twice: the processors of before are kept
    assert all(isinstance(a.processor, FastVAEAttnProcessor) for a in attns)
    assert disable_fast_vae_attention(vae) is vae
    assert [a.processor for a in attns] == before
    assert not is_fast_vae_attention_enabled(vae)
    attns[1].set_processor(FastVAEAttnProcessor())   # set directly: disable falls back to diffusers' default
    disable_fast_vae_attention(vae)
    assert isinstance(attns[1].processor, AttnProcessor2_0)
    assert not any(hasattr(a, "_d4k_previous_processor") for a in attns)


def test_context_manager_and_bad_input(seed):
    vae = _vae()
    attn = vae.decoder.mid_block.attentions[0]
    before = attn.processor
    with fast_vae_attention(vae.decoder.mid_block) as m:
        assert m is vae.decoder.mid_block and isinstance(attn.processor, FastVAEAttnProcessor)
    assert attn.processor is before
    with fast_vae_attention(vae.decoder.mid_block, enabled=False):
        assert attn.processor is before
    no_attn = AutoencoderKL(**_CFG, mid_block_add_attention=False)
    assert enable_fast_vae_attention(no_attn) is no_attn and not is_fast_vae_attention_enabled(no_attn)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        enable_fast_vae_attention("vae")


def test_mask_runs_diffusers_processor(seed):
    """A call with an attention mask (no VAE passes one) is AttnProcessor2_0's."""
    vae = _vae()
    attn = vae.decoder.mid_block.attentions[0]
    h = torch.randn(2, 64, 3, 4)
    mask = torch.zeros(2, 1, 12)
    mask[:, :, 5:] = -1e4
    with torch.no_grad():
        ref = AttnProcessor2_0()(attn, h, attention_mask=mask)
        out = FastVAEAttnProcessor()(attn, h, attention_mask=mask)
    assert torch.equal(out, ref)


def test_tiled_decode_with_the_processor(seed):
    """A VAE with the processor enabled: the exact tiled decode == the untiled stock decode."""
    vae = _vae(SCAutoencoderKL, stride=2)
    z = torch.randn(1, 4, 11, 9)
    with torch.no_grad():
        ref = vae.decode(z).sample
    enable_fast_vae_attention(vae)
    _close(tiled_decode(vae, z, tile=4, progress=False), ref)


def test_tiled_decoder_runs_its_mid_block_through_the_processor(monkeypatch, seed):
    """With the d4k kernels (use_kernels=True; the default on CUDA) the tiled decoder's whole-latent
    mid-block runs the processor, once, and the VAE keeps its own processor afterwards; with
    use_kernels=False the model's own processor runs."""
    vae = _vae()
    z = torch.randn(1, 4, 10, 9)
    with torch.no_grad():
        ref = vae.decode(z).sample
    calls = []
    real = vae_attention.attention
    monkeypatch.setattr(vae_attention, "attention", lambda q, k, v: calls.append(tuple(q.shape)) or real(q, k, v))
    with backend.prefer("cpu"):   # the d4k op table on its CPU paths (the interpreter is slow)
        _close(tiled_decode(vae, z, tile=5, progress=False, use_kernels=True), ref)
    assert calls == [(1, 1, 90, 64)]
    assert isinstance(vae.decoder.mid_block.attentions[0].processor, AttnProcessor2_0)
    _close(tiled_decode(vae, z, tile=5, progress=False, use_kernels=False), ref)
    assert len(calls) == 1


def test_exact_tiling_single_tile_runs_the_processor_with_the_kernels(monkeypatch, seed):
    """enable_exact_tiling's one-tile shortcut (the class's own decode) runs the mid-block attention
    through the d4k op exactly when the tiled decode would (use_kernels), restoring the processor after."""
    from d4k_kernels.integrations.diffusers import enable_exact_tiling

    vae = _vae()
    z = torch.randn(1, 4, 6, 5)
    with torch.no_grad():
        ref = vae.decode(z).sample
    calls = []
    real = vae_attention.attention
    monkeypatch.setattr(vae_attention, "attention", lambda q, k, v: calls.append(tuple(q.shape)) or real(q, k, v))
    for use_kernels, n in ((True, 1), (False, 1)):
        enable_exact_tiling(vae, tile=64, use_kernels=use_kernels, progress=False)
        with torch.no_grad(), backend.prefer("cpu"):
            _close(vae.decode(z).sample, ref)
        assert len(calls) == n
        assert isinstance(vae.decoder.mid_block.attentions[0].processor, AttnProcessor2_0)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_decode_unchanged(seed, dtype, no_tf32):
    """On a GPU, a 64^2 latent (4096 tokens): the kernel in the decode; fp32 == stock to 1e-4, bf16 no
    further from the fp32 decode than the stock bf16 decode is (up to 1 dB of PSNR)."""
    vae = _vae().to("cuda")
    z = torch.randn(1, 4, 64, 64, device="cuda")
    with torch.no_grad():
        exact = vae.decode(z).sample
        vae16 = torch.nn.Module.to(vae, dtype=dtype)
        ref = vae16.decode(z.to(dtype)).sample
        enable_fast_vae_attention(vae16)
        out = vae16.decode(z.to(dtype)).sample
    if dtype == torch.float32:
        _close(out, ref)
    else:
        def psnr(a, b):
            a, b = a.double(), b.double()
            return 10 * math.log10((b.max() - b.min()).item() ** 2 / ((a - b) ** 2).mean().item())
        assert psnr(out, exact) >= psnr(ref, exact) - 1.0
