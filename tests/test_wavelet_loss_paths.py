"""How d4k_kernels.wavelet_loss runs, beyond its values (those are tests/test_wavelet_loss.py):
``wavelet_loss_and_grad`` against autograd, torch.compile, the registered ops (opcheck), forward-mode
AD and torch.func (the composite route of ops/_route.py), the fixed GPU tiles under the interpreter,
the kernels compiled for sm_90, and on a GPU against the torch path."""
import pytest
import torch

from d4k_kernels import backend
from d4k_kernels.ops.wavelet_loss import coefficient_count, wavelet_loss, wavelet_loss_and_grad
from d4k_kernels.reference.wavelet_loss import wavelet_loss_f64
from wlf_testing import close, grads, inputs


# ----------------------------------------------------------------------------------------------
# the fixed GPU tiles, run by the interpreter
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("levels", [1, 5])
def test_gpu_tile_sizes_under_interpreter(seed, monkeypatch, levels):
    """The fixed GPU tiles (16 x 128 pixels, 32 rows for J = 5) on an image spanning several tiles
    with ragged edges, run by the Triton interpreter."""
    if not (backend.HAS_TRITON and backend.interpreter_enabled()):
        pytest.skip("needs the Triton interpreter")
    import d4k_kernels.ops._wlf_triton as wl

    orig = wl.tiles
    monkeypatch.setattr(wl, "tiles", lambda H, W, J, fixed=True: orig(H, W, J, True))
    (p, xt, x0), sig, w = inputs((1, 2, 37, 141), "cpu", torch.bfloat16)
    bw = [0.5 + 0.25 * k for k in range(1 + 3 * levels)]
    with backend.prefer("triton"):
        out = wavelet_loss(p, xt, x0, sig.float(), w.float(), levels=levels, band_weights=bw)
        g = grads(out, [p])[0]
    ref = wavelet_loss_f64(p, xt, x0, sig.float(), w.float(), levels, bw)
    close(out, ref, 1e-5, what="loss")
    close(g, grads(ref, [p])[0], 1e-2, what="grad")


# ----------------------------------------------------------------------------------------------
# wavelet_loss_and_grad: the loss and d loss / d model_pred without autograd
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,levels,bw,reduction,dtype", [
    ((2, 3, 8, 12), 1, None, "mean", torch.float64),
    ((3, 2, 7, 5), 2, (0.5, 2.0, 1.0, 3.0), "sum", torch.float64),
    ((2, 4, 9, 16), 3, "per_level", "none", torch.float32),
    ((2, 4, 16, 10), 1, None, "mean", torch.bfloat16),
    ((1, 1, 1, 1), 1, None, "mean", torch.float16),
])
def test_loss_and_grad_matches_autograd(backend_device, seed, shape, levels, bw, reduction, dtype):
    """Equal to wavelet_loss and its autograd gradient (same kernels: bit-equal loss), and to the
    float64 reference; reduction 'none' gives the gradient of the per-sample losses' sum."""
    _, dev = backend_device
    if bw == "per_level":
        bw = tuple(float(v) for v in torch.rand(1 + 3 * levels).add(0.25))
    (p, xt, x0), sig, w = inputs(shape, dev, dtype)
    loss, g = wavelet_loss_and_grad(p, xt, x0, sig, w, levels=levels, band_weights=bw, reduction=reduction)
    assert not loss.requires_grad and not g.requires_grad
    assert g.shape == p.shape and g.dtype == p.dtype and g.is_contiguous()
    ref = wavelet_loss(p, xt, x0, sig, w, levels=levels, band_weights=bw, reduction=reduction)
    assert torch.equal(loss, ref.detach())
    g_ref = torch.autograd.grad(ref.sum(), p)[0]
    assert torch.equal(g, g_ref)
    exact = wavelet_loss_f64(p, xt, x0, sig, w, levels, bw, reduction=reduction)
    g_exact = grads(exact.sum(), [p])[0]
    tol = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    close(loss, exact, max(tol, 2e-6) if dtype != torch.float64 else tol, what="loss vs float64")
    close(g, g_exact, tol, what="grad vs float64")


def test_loss_and_grad_non_contiguous_mixed(backend_device, seed):
    """Strided views (a transposed model_pred, a sliced x0) and mixed dtypes: the gradient comes back
    contiguous in model_pred's dtype and equals autograd's."""
    _, dev = backend_device
    p = torch.randn(2, 3, 10, 7, dtype=torch.float64, device=dev).to(torch.bfloat16).transpose(2, 3)
    xt = torch.randn(2, 3, 7, 10, device=dev)
    x0 = torch.randn(2, 3, 7, 20, device=dev, dtype=torch.float16)[..., ::2]
    sig, w = torch.rand(2, device=dev), torch.rand(2, device=dev) + 0.5
    assert not p.is_contiguous() and not x0.is_contiguous()
    loss, g = wavelet_loss_and_grad(p, xt, x0, sig, w, levels=2)
    pg = p.detach().clone().requires_grad_(True)
    ref = wavelet_loss(pg, xt, x0, sig, w, levels=2)
    g_ref = torch.autograd.grad(ref, pg)[0]
    assert g.is_contiguous() and g.dtype == torch.bfloat16 and g.shape == p.shape
    assert torch.equal(loss, ref.detach())
    assert torch.equal(g, g_ref.contiguous())


def test_loss_and_grad_drives_backward(backend_device, seed):
    """The documented swap: model_pred.backward(grad) gives a module's parameters the gradients of
    wavelet_loss(...).backward(); inputs that require grad are not touched."""
    _, dev = backend_device
    lin = torch.nn.Conv2d(4, 4, 1).to(dev, torch.float64)
    (x, xt, x0), sig, w = inputs((2, 4, 6, 10), dev, torch.float64)
    xt.requires_grad_(True)
    out = lin(x)
    wavelet_loss(out, xt, x0, sig, w, levels=2).backward()
    ref = [q.grad.clone() for q in lin.parameters()]
    lin.zero_grad()
    xt.grad = None
    out = lin(x)
    loss, g = wavelet_loss_and_grad(out, xt, x0, sig, w, levels=2)
    out.backward(g)
    for a, b in zip(lin.parameters(), ref):
        close(a.grad, b, 1e-12, what="parameter grad")
    assert xt.grad is None


def test_loss_and_grad_bad_inputs():
    p = torch.randn(2, 3, 4, 4)
    with pytest.raises(TypeError, match="sigmas"):
        wavelet_loss_and_grad(p, p, p, None)
    with pytest.raises(ValueError, match="reduction"):
        wavelet_loss_and_grad(p, p, p, torch.rand(2), reduction="max")
    with pytest.raises(ValueError, match="weighting"):
        wavelet_loss_and_grad(p, p, p, torch.rand(2), torch.rand(3))
    with pytest.raises(ValueError):
        wavelet_loss_and_grad(p, p[:, :2], p, torch.rand(2))


def test_loss_and_grad_torch_compile(backend_device, seed):
    _, dev = backend_device
    torch._dynamo.reset()
    (p, xt, x0), sig, w = inputs((2, 3, 6, 7), dev, torch.float32, grad=False)
    cf = torch.compile(lambda *a: wavelet_loss_and_grad(*a, levels=2), fullgraph=True, backend="aot_eager")
    loss, g = cf(p, xt, x0, sig.float(), w.float())
    ref = wavelet_loss_f64(p, xt, x0, sig, w, 2)
    p64 = p.detach().double().requires_grad_(True)
    g_ref = torch.autograd.grad(wavelet_loss_f64(p64, xt, x0, sig, w, 2), p64)[0]
    close(loss, ref, 2e-6, what="compiled loss")
    close(g, g_ref, 2e-6, what="compiled grad")


# ----------------------------------------------------------------------------------------------
# torch.compile, the registered ops, forward AD and torch.func
# ----------------------------------------------------------------------------------------------
def test_torch_compile_fullgraph(backend_device, seed):
    """fullgraph=True: the registered ops keep the graph whole; on the CPU path and on the Triton
    kernels (interpreter / CUDA) behind the op."""
    _, dev = backend_device
    torch._dynamo.reset()
    p = torch.randn(2, 3, 6, 7, device=dev, requires_grad=True)
    xt, x0 = torch.randn(2, 3, 6, 7, device=dev), torch.randn(2, 3, 6, 7, device=dev)
    sig, w = torch.rand(2, 1, 1, 1, device=dev), torch.rand(2, 1, 1, 1, device=dev)

    def f(p, xt, x0, sig, w):
        return wavelet_loss(p, xt, x0, sig, w, levels=2, band_weights=(1.0, 2.0, 0.5, 1.0))

    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    out = cf(p, xt, x0, sig, w)
    g = torch.autograd.grad(out, p)[0]
    ref = wavelet_loss_f64(p, xt, x0, sig, w, 2, (1.0, 2.0, 0.5, 1.0))
    close(out, ref, 2e-6, what="compiled loss")
    close(g, grads(ref, [p])[0], 2e-6, what="compiled grad")


def test_registered_op_opcheck_and_grads(backend_device, seed):
    """The torch.library ops (used under torch.compile): opcheck (schema, fake, autograd
    registration) and gradients equal to the eager path's."""
    _, dev = backend_device
    p = torch.randn(2, 3, 5, 6, device=dev, requires_grad=True)
    xt = torch.randn(2, 3, 5, 6, device=dev, requires_grad=True)
    x0 = torch.randn(2, 3, 5, 6, device=dev)
    sig = torch.rand(2, device=dev, requires_grad=True)
    weights = [1.0, 2.0, 0.5, 3.0, 1.5, 0.25, 2.0]
    op = torch.ops.d4k.wavelet_energy.default
    torch.library.opcheck(op, (p, xt, x0, sig, weights, 2),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    e_op = op(p, xt, x0, sig, weights, 2)
    e_ref = wavelet_loss_f64(p, xt, x0, sig, None, 2, weights, "none") * coefficient_count(p.shape, 2)
    close(e_op, e_ref, 2e-6, what="energy")
    up = torch.rand(2, device=dev)
    for g, gr in zip(torch.autograd.grad(e_op, [p, xt, sig], up), torch.autograd.grad(e_ref, [p, xt, sig], up.double())):
        close(g, gr, 2e-6, what="op grad")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_opcheck(seed, impl, dtype):
    """torch.library.opcheck (schema, fake, autograd registration, AOT dispatch) of
    d4k::wavelet_energy and d4k::wavelet_energy_backward on each implementation, with and without
    x_t, from non-contiguous inputs. The backward op has no derivative of its own, so its inputs do
    not require grad."""
    if impl == "triton" and not (backend.HAS_TRITON and backend.interpreter_enabled()):
        pytest.skip("needs the Triton interpreter")
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    p = torch.randn(2, 3, 6, 5, dtype=torch.float64).to(dtype).transpose(-1, -2).requires_grad_(True)
    xt = torch.randn(2, 3, 5, 6, dtype=torch.float64).to(dtype).requires_grad_(True)
    x0 = torch.randn(2, 3, 5, 12, dtype=torch.float64).to(dtype)[..., ::2]
    sig = torch.rand(2, dtype=acc, requires_grad=True)
    ge = torch.rand(2, dtype=acc)
    weights = [1.0, 2.0, 0.5, 3.0, 1.5, 0.25, 2.0]
    assert not p.is_contiguous() and not x0.is_contiguous()
    with backend.prefer("triton" if impl == "triton" else "cpu"):
        assert backend.choose("wavelet_energy", p) == impl
        for x_t in (xt, None):
            torch.library.opcheck(torch.ops.d4k.wavelet_energy.default, (p, x_t, x0, sig, weights, 2))
            need = [True, x_t is not None, True, True]
            args = (ge, p.detach(), x_t.detach() if x_t is not None else None, x0, sig.detach(), weights, 2, need)
            torch.library.opcheck(torch.ops.d4k.wavelet_energy_backward.default, args)


def test_forward_ad_and_torch_func(backend_device, seed):
    """Under forward-mode AD and torch.func transforms the loss runs the torch path op by op
    (ops/_route.py), on every backend: jvp and forward AD give <autograd gradient, tangent>,
    torch.func.grad gives autograd's gradient, vmap gives the per-sample losses."""
    from torch.autograd import forward_ad as fwAD

    _, dev = backend_device
    (p, xt, x0), sig, w = inputs((2, 3, 6, 5), dev, torch.float64, grad=False)
    t = torch.randn_like(p)
    for bw in ((1.0, 2.0, 0.5, 3.0), None):                  # a transform, and the Parseval shortcut

        def f(p):
            return wavelet_loss(p, xt, x0, sig, w, levels=2, band_weights=bw)

        pr = p.clone().requires_grad_(True)
        g = torch.autograd.grad(f(pr), pr)[0]
        value, tangent = torch.func.jvp(f, (p,), (t,))
        close(value, f(p), 1e-12, what="jvp value")
        close(tangent, (g * t).sum(), 1e-12, what="jvp tangent")
        close(torch.func.grad(f)(p), g, 1e-12, what="func.grad")
        with fwAD.dual_level():
            out = f(fwAD.make_dual(p, t))
            close(fwAD.unpack_dual(out).tangent, (g * t).sum(), 1e-12, what="forward AD")
        per_sample = torch.func.vmap(lambda a, b, c, s: wavelet_loss(a[None], b[None], c[None], s[None],
                                                                     levels=2, band_weights=bw))(p, xt, x0, sig)
        close(per_sample, wavelet_loss(p, xt, x0, sig, levels=2, band_weights=bw, reduction="none"), 1e-12,
               what="vmap")


# ----------------------------------------------------------------------------------------------
# the kernels compile for a real GPU (no GPU needed) and the contiguous path uses vector loads
# ----------------------------------------------------------------------------------------------
_COMPILE_SCRIPT = r"""
import re
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from d4k_kernels.ops import _wlf_triton as wl
FP32 = ("sigma_ptr", "bw_ptr", "part_ptr", "go_ptr", "w_ptr", "epart_ptr")
DIV16 = ("H", "W", "sp_n", "sp_c", "sp_h", "st_n", "st_c", "st_h", "s0_n", "s0_c", "s0_h")
jobs = [(wl._wl_fwd_kernel, 1, True, {}), (wl._wl_fwd_kernel, 5, False, {}),
        (wl._wl_bwd_kernel, 1, True, dict(W_PRED=True, W_XT=False, W_X0=False, W_SIGMA=False)),
        (wl._wl_bwd_kernel, 5, True, dict(W_PRED=True, W_XT=True, W_X0=False, W_SIGMA=False)),
        (wl._wl_bwd_kernel, 3, True, dict(W_PRED=True, W_XT=True, W_X0=True, W_SIGMA=True)),
        (wl._wl_bwd_kernel, 1, False, dict(W_PRED=True, W_XT=False, W_X0=False, W_SIGMA=False))]
for kern, levels, unit, flags in jobs:
    names = kern.arg_names
    bh, bw, _, _ = wl.tiles(4096, 4096, levels)
    const = dict(HAS_XT=True, LEVELS=levels, BH=bh, BW=bw, ACC=tl.float32, UNIT_W=unit, **flags)
    sig = {n: "constexpr" if n in const else (("*fp32" if n in FP32 else "*bf16") if n.endswith("_ptr")
                                              else "i32")
           for n in names}
    consts = {(names.index(n),): v for n, v in const.items()}
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in names if n.endswith("_ptr") or n in DIV16}
    k = triton.compile(ASTSource(fn=kern, signature=sig, constexprs=consts, attrs=attrs),
                       target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    ptx = k.asm["ptx"]
    if unit:  # 16-byte loads of the bf16 inputs on the contiguous path
        assert re.search(r"ld\.global(\.\w+)*\.v4", ptx), (levels, flags)
fin = wl._wl_finish_kernel
for per_sample in (False, True):
    const = dict(PER_SAMPLE=per_sample, BLOCK=1024, ACC=tl.float32)
    names = fin.arg_names
    sig = {n: "constexpr" if n in const else ("*fp32" if n.endswith("_ptr") else "i32") for n in names}
    consts = {(names.index(n),): v for n, v in const.items()}
    triton.compile(ASTSource(fn=fin, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                   options={"num_warps": 4})
resc = wl._wl_rescale_kernel
for acc_t in ("fp32",):
    names = resc.arg_names
    const = dict(BLOCK=4096, ACC=tl.float32)
    sig = {"g_ptr": "*bf16", "go_ptr": "*" + acc_t, "go_stride": "i32", "per_sample": "i32", "BLOCK": "constexpr",
           "ACC": "constexpr"}
    consts = {(names.index(n),): v for n, v in const.items()}
    triton.compile(ASTSource(fn=resc, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                   options={"num_warps": 4})
print("compiled")
"""


@pytest.mark.skipif(not backend.HAS_TRITON, reason="needs triton")
def test_kernels_compile_for_sm90():
    """Compile forward (1 and 5 levels) and backward kernels for sm_90 in a process without the
    interpreter: the GPU compiler accepts what the interpreter runs, and contiguous bf16 inputs
    are read with vector loads."""
    from gpu_compile import assert_compiles_for_sm90

    assert_compiles_for_sm90(_COMPILE_SCRIPT)


@pytest.mark.cuda
@pytest.mark.parametrize("shape,levels,bw", [((4, 16, 512, 512), 1, None), ((2, 16, 333, 517), 3, (1.0, 2.0, 0.5, 3.0)),
                                             ((1, 16, 256, 256), 2, None)])
def test_cuda_matches_cpu_path(seed, shape, levels, bw):
    dev = torch.device("cuda")
    p = torch.randn(shape, device=dev, dtype=torch.bfloat16, requires_grad=True)
    xt, x0 = torch.randn(shape, device=dev, dtype=torch.bfloat16), torch.randn(shape, device=dev, dtype=torch.bfloat16)
    sig, w = torch.rand(shape[0], device=dev), torch.rand(shape[0], device=dev)
    out = wavelet_loss(p, xt, x0, sig, w, levels=levels, band_weights=bw)
    g = torch.autograd.grad(out, p)[0]
    with backend.prefer("cpu"):
        ref = wavelet_loss(p, xt, x0, sig, w, levels=levels, band_weights=bw)
        gr = torch.autograd.grad(ref, p)[0]
    close(out, ref, 1e-5, what="loss")
    close(g, gr, 1e-2, what="grad")
    a = wavelet_loss(p, xt, x0, sig, w, levels=levels, band_weights=bw)
    assert torch.equal(a, out)  # deterministic on the GPU too


@pytest.mark.cuda
def test_cuda_over_2_31_elements(seed):
    """(1, 33, 8192, 8192) bf16 inputs (2.2e9 elements each): int64 indexing. With equal band
    weights the loss is the mean of d**2 (orthonormal pyramid) and the gradient -sigma*2*w/count*d;
    the loss is checked channel by channel, the gradient on the last rows of the last channel."""
    dev = torch.device("cuda")
    shape = (1, 33, 8192, 8192)
    p = torch.empty(shape, device=dev, dtype=torch.bfloat16).uniform_(-1, 1).requires_grad_(True)
    xt = torch.empty(shape, device=dev, dtype=torch.bfloat16).uniform_(-1, 1)
    x0 = torch.empty(shape, device=dev, dtype=torch.bfloat16).uniform_(-1, 1)
    assert p.numel() > 2**31
    sig, w = torch.tensor([0.3], device=dev), torch.tensor([1.7], device=dev)
    out = wavelet_loss(p, xt, x0, sig, w)
    g = torch.autograd.grad(out, p)[0]
    count = coefficient_count(shape, 1)
    with torch.no_grad():
        tot = sum(((xt[:, c].float() - 0.3 * p[:, c].float() - x0[:, c].float()) ** 2).sum(dtype=torch.float64)
                  for c in range(shape[1]))
        ref = 1.7 * tot / count
        close(out, ref, 1e-4, what="loss")
        d_tail = xt[0, -1, -4:].float() - 0.3 * p[0, -1, -4:].float() - x0[0, -1, -4:].float()
        close(g[0, -1, -4:], -0.3 * 2 * 1.7 / count * d_tail, 1e-2, what="grad tail")
