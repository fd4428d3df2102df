"""Multi-level Haar DWT / IDWT (d4k_kernels.ops.haar) against independent references:
pywt (float64 wavedec2 / waverec2), pytorch_wavelets (drop-in modules), and the plain float64
torch reference in d4k_kernels/reference/haar.py. Every test that takes ``backend_device`` runs
the CPU path and the Triton kernels (under the interpreter without a GPU)."""
import warnings

import numpy as np
import pytest
import torch
from conftest import fake_extensions

import d4k_kernels
from d4k_kernels import backend, settings
from d4k_kernels.ops import _haar_torch, haar
from d4k_kernels.reference import haar as ref
from d4k_kernels.reference.peers import import_pytorch_wavelets

if backend.HAS_TRITON:
    from d4k_kernels.ops import _haar_triton

pywt = pytest.importorskip("pywt")

MODES = ("zero", "symmetric", "reflect", "periodization")


@pytest.fixture(autouse=True)
def small_tiles():
    """Tiny Triton tiles under the interpreter, so that small test images span several programs
    (edge masks). On a GPU the real tiles run (the cuda tests use large shapes)."""
    if torch.cuda.is_available():
        yield
        return
    with settings.override(haar_tile=(4, 16)):
        yield


def pywt_dec(x, levels, mode):
    """pywt wavedec2 of every plane of x (float64 numpy), stacked back into (yl, yh) tensors."""
    xs = x.detach().double().cpu().numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # "level too high" warning beyond floor(log2 n)
        c = pywt.wavedec2(xs, "haar", mode=mode, level=levels, axes=(-2, -1))
    yl = torch.from_numpy(np.ascontiguousarray(c[0]))
    yh = [torch.from_numpy(np.stack(d, axis=-3)) for d in reversed(c[1:])]
    return yl, yh


def close(a, b, rtol=1e-12, atol=1e-12, what=""):
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    torch.testing.assert_close(a.double().cpu(), b.double().cpu(), rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def random_shape(lo=2, hi=19):
    return tuple(int(v) for v in torch.randint(lo, hi, (2,)))


# ---------------------------------------------------------------------------------------------
# values against pywt
# ---------------------------------------------------------------------------------------------
SHAPES = [  # (H, W, J): even, odd, one-pixel-short, tiny, all levels the size allows
    (8, 8, 1), (16, 8, 3), (7, 5, 2), (9, 13, 3), (15, 16, 4), (2, 3, 1), (3, 3, 2), (32, 32, 5),
    (17, 6, 3), (31, 33, 5),
]
SHAPES_GPU = [(7, 5, 2), (9, 13, 3), (16, 16, 4), (64, 128, 5)]   # fused, odd, multi-group
SHAPES_INTERP = [(7, 5, 2), (9, 13, 3), (3, 3, 2), (17, 6, 3), (16, 16, 4)]


@pytest.mark.parametrize("mode", MODES)
def test_dwt2_matches_pywt(backend_device, seed, mode):
    name, dev = backend_device
    # fewer shapes for the Triton kernels: the interpreter is slow on the CPU, and on a GPU each
    # new size class compiles new kernel variants
    if name == "triton" and dev.type == "cuda":
        shapes = SHAPES_GPU
    else:
        shapes = (SHAPES_INTERP if name == "triton" else SHAPES) + [random_shape(2, 13) + (None,)]
    for H, W, J in shapes:
        J = J or haar.max_levels(H, W)
        x = torch.randn(2, 3, H, W, dtype=torch.float64, device=dev)
        yl, yh = d4k_kernels.dwt2(x, levels=J, mode=mode)
        pl, ph = pywt_dec(x, J, mode)
        close(yl, pl, what=f"yl {H}x{W} J={J}")
        assert len(yh) == J
        for k, (a, b) in enumerate(zip(yh, ph)):
            close(a, b, what=f"yh[{k}] {H}x{W} J={J}")
        # inverse: pywt waverec2 (even-sized) and the exact inverse with output_size
        rec = d4k_kernels.idwt2((yl, yh), mode=mode)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pc = [yl.cpu().numpy()] + [tuple(t.cpu().numpy() for t in d) for d in haar.to_pywt(yl, yh)[1:]]
            prec = pywt.waverec2(pc,
                                 "haar", mode=mode, axes=(-2, -1))
        close(rec, torch.from_numpy(prec), what=f"waverec2 {H}x{W} J={J}")
        out = d4k_kernels.idwt2((yl, yh), mode=mode, output_size=(H, W))
        assert out.is_contiguous() and yl.is_contiguous() and all(d.is_contiguous() for d in yh)
        close(out, x, what=f"roundtrip {H}x{W} J={J}")


def test_reference_matches_pywt(seed):
    """The float64 reference used for dtype tests is itself checked against pywt."""
    for mode in MODES:
        H, W = random_shape()
        J = haar.max_levels(H, W)
        x = torch.randn(2, H, W, dtype=torch.float64)
        rl, rh = ref.dwt2_ref(x, J, mode)
        pl, ph = pywt_dec(x, J, mode)
        close(rl, pl, what="ref yl")
        for a, b in zip(rh, ph):
            close(a, b, what="ref yh")
        close(ref.idwt2_ref(rl, rh, (H, W)), x, what="ref roundtrip")


def test_worked_example(backend_device):
    """docs/ops.md, Haar DWT / IDWT: [[1, 2], [3, 5]] -> LL 5.5, LH -2.5, HL -1.5, HH 0.5."""
    _, dev = backend_device
    x = torch.tensor([[1.0, 2.0], [3.0, 5.0]], device=dev)
    yl, yh = d4k_kernels.dwt2(x)
    assert yl.item() == 5.5
    assert yh[0].flatten().tolist() == [-2.5, -1.5, 0.5]


def test_leading_dims(backend_device, seed):
    _, dev = backend_device
    x = torch.randn(2, 1, 3, 6, 10, dtype=torch.float64, device=dev)
    yl, yh = d4k_kernels.dwt2(x, levels=2, mode="reflect")
    assert yl.shape == (2, 1, 3, 2, 3) and yh[0].shape == (2, 1, 3, 3, 3, 5) and yh[1].shape == (2, 1, 3, 3, 2, 3)
    pl, ph = pywt_dec(x, 2, "reflect")
    close(yl, pl)
    close(yh[1], ph[1])
    x2 = x[0, 0, 0]                                    # a plain 2-D image
    yl2, yh2 = d4k_kernels.dwt2(x2, levels=2, mode="reflect")
    close(yl2, yl[0, 0, 0])
    close(d4k_kernels.idwt2((yl2, yh2), output_size=x2.shape), x2)


def test_multi_group_plan(backend_device, seed):
    """More levels than one launch carries (64x64, J=6 -> groups of 5 + 1) and odd sizes that
    split the plan; the plan itself is checked too."""
    _, dev = backend_device
    if backend.HAS_TRITON:
        plan, chain = _haar_triton.plan, _haar_torch.chain
        assert plan(chain(512, 3), chain(512, 3)) == [(0, 3)]
        assert plan(chain(512, 9), chain(512, 9)) == [(0, 5), (5, 4)]
        assert plan(chain(4095, 3), chain(4096, 3)) == [(0, 3)]   # 4095 -> 2048 -> 1024
        assert plan(chain(20, 3), chain(20, 3)) == [(0, 2), (2, 1)]  # 20 -> 10 -> 5 (odd) -> 3
    for (H, W, J), mode in [((64, 64, 6), "zero"), ((20, 40, 3), "reflect"), ((13, 50, 4), "symmetric")]:
        x = torch.randn(1, 2, H, W, dtype=torch.float64, device=dev)
        if True:
            yl, yh = d4k_kernels.dwt2(x, J, mode)
            pl, ph = pywt_dec(x, J, mode)
            close(yl, pl, what=f"{H}x{W} J={J} {mode}")
            for a, b in zip(yh, ph):
                close(a, b, what=f"{H}x{W} J={J} {mode}")
            close(d4k_kernels.idwt2((yl, yh), output_size=(H, W)), x)


# ---------------------------------------------------------------------------------------------
# dtypes
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtypes_vs_float64(backend_device, seed, dtype):
    """fp32 accumulation and exact +-0.5 taps: every output is the float64 value rounded once to
    the dtype (half an ulp relative), which pytorch_wavelets' bf16 filters do not achieve."""
    name, dev = backend_device
    eps = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}[dtype]
    if name == "triton" and dev.type == "cpu" and dtype == torch.bfloat16:
        eps = 2.0**-7   # the interpreter truncates fp32 -> bf16 (GPUs round to nearest even)
    for (H, W, J), mode in [((16, 16, 3), "zero"), ((11, 6, 2), "symmetric"), ((9, 9, 3), "reflect")]:
        x = torch.randn(2, 3, H, W, device=dev).to(dtype)
        yl, yh = d4k_kernels.dwt2(x, levels=J, mode=mode)
        assert yl.dtype == dtype and all(d.dtype == dtype for d in yh)
        rl, rh = ref.dwt2_ref(x.double(), J, mode)
        # one rounding to the dtype (half an ulp: eps is one ulp) plus the fp32 arithmetic
        # of J levels (matters for fp32 only, and for coefficients that nearly cancel)
        slack = 2.0**-20 * J * x.double().abs().max().item()
        for a, b in [(yl, rl)] + list(zip(yh, rh)):
            err = (a.double().cpu() - b.cpu()).abs()
            assert (err <= eps * b.cpu().abs() + slack).all(), f"{dtype} {mode}: max err {err.max()}"
        rec = d4k_kernels.idwt2((yl, yh), output_size=(H, W))
        assert rec.dtype == dtype
        want = ref.idwt2_ref(yl.double(), [d.double() for d in yh], (H, W))
        err = (rec.double().cpu() - want.cpu()).abs()
        assert (err <= eps * want.cpu().abs() + slack).all(), f"idwt {dtype}: max err {err.max()}"


def test_bad_dtype_and_inputs():
    with pytest.raises(TypeError, match="int64"):
        d4k_kernels.dwt2(torch.zeros(4, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="Tensor"):
        d4k_kernels.dwt2(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        d4k_kernels.dwt2(torch.zeros(8))
    with pytest.raises(ValueError, match="empty"):
        d4k_kernels.dwt2(torch.zeros(0, 3, 8, 8))
    with pytest.raises(ValueError, match="1x8"):
        d4k_kernels.dwt2(torch.zeros(2, 1, 8))
    with pytest.raises(ValueError, match="levels=4 .* at most 3"):
        d4k_kernels.dwt2(torch.zeros(1, 1, 7, 100), levels=4)
    with pytest.raises(ValueError, match="levels must be >= 1, got 0"):
        d4k_kernels.dwt2(torch.zeros(4, 4), levels=0)
    with pytest.raises(TypeError, match="levels must be an int"):
        d4k_kernels.dwt2(torch.zeros(4, 4), levels=1.0)
    with pytest.raises(ValueError, match="'periodic'"):
        d4k_kernels.dwt2(torch.zeros(4, 4), mode="periodic")
    yl, yh = d4k_kernels.dwt2(torch.zeros(1, 1, 7, 9), levels=2)
    with pytest.raises(ValueError, match="output_size=\\(6, 9\\)"):
        d4k_kernels.idwt2((yl, yh), output_size=(6, 9))
    with pytest.raises(ValueError, match="yh\\[0\\] is 5x5"):
        d4k_kernels.idwt2((yl, [torch.zeros(1, 1, 3, 5, 5), yh[1]]))
    with pytest.raises(ValueError, match="yh\\[0\\] has shape"):
        d4k_kernels.idwt2((yl, [yh[0][:, :, :2], yh[1]]))
    with pytest.raises(TypeError, match="dtype"):
        d4k_kernels.idwt2((yl, [yh[0].double(), yh[1]]))
    with pytest.raises(ValueError, match="mode"):
        d4k_kernels.idwt2((yl, yh), mode="bogus")


# ---------------------------------------------------------------------------------------------
# non-contiguous inputs
# ---------------------------------------------------------------------------------------------
def test_non_contiguous(backend_device, seed):
    _, dev = backend_device
    base = torch.randn(2, 4, 13, 18, dtype=torch.float64, device=dev)
    views = {
        "transposed": base.transpose(-1, -2),              # (2, 4, 18, 13)
        "sliced": base[:, 1:, 2:, ::2],                    # strided columns
        "channels_swapped": base.transpose(0, 1),          # leading dims not mergeable -> reshape copies
        "channels_last": base.contiguous(memory_format=torch.channels_last),
        "expanded": base[:1, :1].expand(3, 2, 13, 18),     # stride-0 planes
    }
    for i, (name, v) in enumerate(views.items()):
        assert not v.is_contiguous() or name == "channels_last"
        for mode in [("zero", "reflect")[i % 2]]:
            yl, yh = d4k_kernels.dwt2(v, levels=2, mode=mode)
            pl, ph = pywt_dec(v, 2, mode)
            close(yl, pl, what=name)
            for a, b in zip(yh, ph):
                close(a, b, what=name)
            # non-contiguous coefficients into the inverse
            yl_t = yl.transpose(-1, -2).contiguous().transpose(-1, -2)
            yh_t = [d.transpose(-1, -2).contiguous().transpose(-1, -2) for d in yh]
            close(d4k_kernels.idwt2((yl_t, yh_t), output_size=v.shape[-2:]), v, what=name)


# ---------------------------------------------------------------------------------------------
# autograd
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_dwt2(backend_device, seed, mode):
    """Exact adjoint, including the padded row/col folded back (odd sizes), every mode."""
    name, dev = backend_device
    fast = name == "triton"
    for H, W, J in [(5, 6, 2), (4, 7, 1)] if fast else [(5, 6, 2), (4, 7, 1), (7, 3, 2), (6, 8, 2)]:
        x = torch.randn(1, 2, H, W, dtype=torch.float64, device=dev, requires_grad=True)

        def f(x):
            yl, yh = d4k_kernels.dwt2(x, levels=J, mode=mode)
            return (yl, *yh)

        assert torch.autograd.gradcheck(f, (x,), fast_mode=fast), f"{H}x{W} J={J}"


@pytest.mark.parametrize("odd", [False, True])
def test_gradcheck_idwt2(backend_device, seed, odd):
    name, dev = backend_device
    H, W = (5, 7) if odd else (4, 8)
    yl, yh = d4k_kernels.dwt2(torch.randn(1, 1, H, W, dtype=torch.float64, device=dev), levels=2)
    yl.requires_grad_(True)
    yh = [d.clone().requires_grad_(True) for d in yh]

    def f(yl, a, b):
        return d4k_kernels.idwt2((yl, [a, b]), output_size=(H, W))

    assert torch.autograd.gradcheck(f, (yl, *yh), fast_mode=name == "triton")


def test_gradgradcheck_cpu(seed):
    """The backward is made of the same custom ops, so second derivatives work too."""
    x = torch.randn(1, 1, 5, 4, dtype=torch.float64, requires_grad=True)
    with backend.prefer("cpu"):
        assert torch.autograd.gradgradcheck(lambda x: d4k_kernels.dwt2(x, 2, "reflect")[1][0], (x,))


def test_backward_one_output_used(backend_device, seed):
    """Gradients of unused outputs arrive as None/zeros; the adjoint still holds:
    <dwt(x), g> == <x, dwt^T(g)> for the used output."""
    _, dev = backend_device
    x = torch.randn(2, 9, 7, dtype=torch.float64, device=dev, requires_grad=True)
    yl, yh = d4k_kernels.dwt2(x, levels=2, mode="symmetric")
    g = torch.randn_like(yh[1])
    (gx,) = torch.autograd.grad((yh[1] * g).sum(), x)
    # explicit adjoint through the float64 reference (autograd of plain torch ops)
    xr = x.detach().clone().requires_grad_(True)
    (gr,) = torch.autograd.grad((ref.dwt2_ref(xr, 2, "symmetric")[1][1] * g).sum(), xr)
    close(gx, gr)


def test_torch_func_transforms_and_forward_ad(seed):
    """torch.func grad / jvp / vmap and forward-mode AD (which custom ops with only a backward
    formula cannot serve) run the plain functional torch route and give the right answers."""
    from torch.autograd import forward_ad as fwAD

    x = torch.randn(2, 1, 5, 6, dtype=torch.float64)
    t = torch.randn_like(x)

    def f(x):
        return d4k_kernels.dwt2(x, 2, "reflect")[1][0].square().sum()

    xr = x.clone().requires_grad_(True)
    f(xr).backward()
    close(torch.func.grad(f)(x), xr.grad, what="func.grad")
    _, tan = torch.func.jvp(lambda x: d4k_kernels.dwt2(x, 2, "reflect")[1][1], (x,), (t,))
    close(tan, ref.dwt2_ref(t, 2, "reflect")[1][1], what="jvp (the DWT is linear)")
    y = torch.func.vmap(lambda x: d4k_kernels.dwt2(x, 1)[1][0])(x)
    close(y, ref.dwt2_ref(x, 1)[1][0], what="vmap")
    with fwAD.dual_level():
        yl, yh = d4k_kernels.dwt2(fwAD.make_dual(x, t), 2, "symmetric")
        rec = d4k_kernels.idwt2((yl, yh), output_size=(5, 6))
        close(fwAD.unpack_dual(yl).tangent, ref.dwt2_ref(t, 2, "symmetric")[0], what="forward AD")
        close(fwAD.unpack_dual(rec).tangent, t, what="forward AD through the inverse")


# ---------------------------------------------------------------------------------------------
# the registered ops
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("impl", ["cpp", "torch", "triton"])
def test_opcheck(monkeypatch, seed, impl, dtype):
    """torch.library.opcheck (schema, fake, autograd registration, AOT dispatch) of d4k::haar_dwt2
    and d4k::haar_idwt2 on each implementation, from non-contiguous odd-sized inputs, in every fold
    of the inverse."""
    if impl == "triton" and not (backend.HAS_TRITON and backend.interpreter_enabled()):
        pytest.skip("needs the Triton interpreter")
    if impl == "cpp" and backend.extension("haar") is None:
        pytest.skip("compiled CPU levels unavailable")
    if impl == "torch":
        fake_extensions(monkeypatch, haar=None)
    x = torch.randn(2, 3, 7, 10, dtype=torch.float64).to(dtype).transpose(-1, -2)     # (2, 3, 10, 7)
    assert not x.is_contiguous()
    with backend.prefer("triton" if impl == "triton" else "cpu"):
        assert backend.choose("haar_dwt2", x) == impl
        for mode in ("zero", "reflect"):
            torch.library.opcheck(torch.ops.d4k.haar_dwt2.default, (x.clone().requires_grad_(True), 2, mode))
        yl, *yh = torch.ops.d4k.haar_dwt2(x, 2, "zero")
        yl = yl.transpose(-1, -2).contiguous().transpose(-1, -2).requires_grad_(True)   # strided low-pass
        yh = [d.clone().requires_grad_(True) for d in yh]
        for fold in ("crop", "edge", "reflect"):
            torch.library.opcheck(torch.ops.d4k.haar_idwt2.default, (yl, yh, 10, 7, fold))


# ---------------------------------------------------------------------------------------------
# torch.compile (CPU path)
# ---------------------------------------------------------------------------------------------
def test_torch_compile_fullgraph(seed):
    torch._dynamo.reset()
    fwd = d4k_kernels.DWTForward(J=2, mode="symmetric")
    inv = d4k_kernels.DWTInverse(mode="symmetric")

    def f(x):
        yl, yh = fwd(x)
        yl2, yh2 = d4k_kernels.dwt2(x * 2, levels=1, mode="reflect")
        rec = inv((yl, yh))
        return rec.square().sum() + yl2.sum() + yh2[0].abs().sum() + yh[1].sum()

    x = torch.randn(2, 3, 8, 12, requires_grad=True)
    with backend.prefer("cpu"):
        cf = torch.compile(f, fullgraph=True, backend="aot_eager")
        out = cf(x)
        (g,) = torch.autograd.grad(out, x)
        want = f(x)
        (gw,) = torch.autograd.grad(want, x)
    close(out, want, rtol=1e-5, atol=1e-5)
    close(g, gw, rtol=1e-5, atol=1e-5)


def test_torch_compile_inductor_fullgraph(seed):
    """The default backend (inductor) too, on the even-size training case."""
    torch._dynamo.reset()

    def f(x):
        yl, yh = d4k_kernels.dwt2(x, levels=2)
        return d4k_kernels.idwt2((yl, yh), output_size=(7, 8)), yh[1]

    x = torch.randn(1, 4, 7, 8)
    with backend.prefer("cpu"):
        out = torch.compile(f, fullgraph=True)(x)
        want = f(x)
    close(out[0], want[0], rtol=1e-6, atol=1e-6)
    close(out[0], x, rtol=1e-6, atol=1e-6)
    close(out[1], want[1], rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# drop-in modules vs pytorch_wavelets, pywt converters
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ptw():
    try:
        return import_pytorch_wavelets()
    except ImportError:
        pytest.skip("pytorch_wavelets is not installed")


@pytest.mark.parametrize("mode", MODES)
def test_drop_in_vs_pytorch_wavelets(backend_device, seed, ptw, mode):
    """Even sizes in every mode; odd sizes in zero mode (where pytorch_wavelets is right,
    gradients included)."""
    _, dev = backend_device
    cases = [((2, 3, 8, 12), 2), ((1, 2, 16, 16), 3)]
    if mode == "zero":
        cases += [((1, 2, 7, 9), 2), ((2, 1, 10, 5), 3)]
    for shape, J in cases:
        x = torch.randn(shape, device=dev)
        xa = x.clone().requires_grad_(True)
        xb = x.clone().requires_grad_(True)
        yl, yh = d4k_kernels.DWTForward(J=J, wave="haar", mode=mode)(xa)
        pl, ph = ptw.DWTForward(J=J, wave="haar", mode=mode).to(dev)(xb)
        close(yl, pl, rtol=1e-5, atol=1e-5, what=f"{shape} yl")
        for a, b in zip(yh, ph):
            close(a, b, rtol=1e-5, atol=1e-5, what=f"{shape} yh")
        rec = d4k_kernels.DWTInverse(wave="haar", mode=mode)((yl, yh))
        prec = ptw.DWTInverse(wave="haar", mode=mode).to(dev)((pl, ph))
        close(rec, prec, rtol=1e-5, atol=1e-5, what=f"{shape} inverse")
        w = torch.randn_like(prec)
        (rec * w).sum().backward()
        (prec * w).sum().backward()
        close(xa.grad, xb.grad, rtol=1e-5, atol=1e-5, what=f"{shape} grad")


def test_drop_in_inverse_quirks(ptw, seed):
    """pytorch_wavelets' DWTInverse accepts None details (zeros) and a low-pass one larger than
    the coarsest detail (it crops): so does ours."""
    x = torch.randn(1, 2, 11, 6)
    pl, ph = ptw.DWTForward(J=2, mode="zero")(x)
    ph_none = [None, ph[1]]
    big = torch.cat([pl, pl[..., -1:, :]], dim=-2)
    for coeffs in [(pl, ph_none), (big, ph)]:
        with backend.prefer("cpu"):
            ours = d4k_kernels.DWTInverse(mode="zero")(coeffs)
        close(ours, ptw.DWTInverse(mode="zero")(coeffs), rtol=1e-6, atol=1e-6)
    assert d4k_kernels.idwt2((pl, [])) is pl


def test_wave_names():
    d4k_kernels.DWTForward(J=1, wave="db1")
    d4k_kernels.DWTInverse(wave=pywt.Wavelet("haar"))
    d4k_kernels.DWTForward(J=1, wave=pywt.Wavelet("db1"))
    for bad in ("db2", "sym4", pywt.Wavelet("bior1.3")):
        with pytest.raises(NotImplementedError, match="only the Haar"):
            d4k_kernels.DWTForward(J=1, wave=bad)
        with pytest.raises(NotImplementedError, match="db1"):
            d4k_kernels.DWTInverse(wave=bad)
    with pytest.raises(ValueError, match="mode"):
        d4k_kernels.DWTForward(J=1, mode="periodic")


def test_pywt_converters(seed):
    x = torch.randn(2, 3, 13, 10, dtype=torch.float64)
    yl, yh = d4k_kernels.dwt2(x, levels=3, mode="symmetric")
    c = haar.to_pywt(yl, yh)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pc = pywt.wavedec2(x.numpy(), "haar", mode="symmetric", level=3)
    assert len(c) == len(pc) == 4
    close(c[0], torch.from_numpy(pc[0]))
    for ours, theirs in zip(c[1:], pc[1:]):                      # (cH, cV, cD), coarsest first
        for a, b in zip(ours, theirs):
            close(a, torch.from_numpy(b))
    yl2, yh2 = haar.from_pywt(pc)
    close(yl2, yl)
    for a, b in zip(yh2, yh):
        close(a, b)
    with pytest.raises(ValueError, match="tuple"):
        haar.from_pywt([pc[0], pc[1][0]])


# ---------------------------------------------------------------------------------------------
# index math, compiled kernels, GPU
# ---------------------------------------------------------------------------------------------
@pytest.mark.skipif(not (backend.HAS_TRITON and backend.interpreter_enabled()), reason="needs the Triton interpreter")
def test_offsets_are_int64():
    """The kernels' offset helper does not overflow int32: plane 5 x stride 2^30 and row/col
    strides near 2^31 (the products exceed 2^31)."""
    import triton
    import triton.language as tl

    @triton.jit
    def probe(out_ptr, s_plane, s_row, s_col):
        plane = tl.program_id(0) + 5
        rows = tl.arange(0, 4) + 3
        cols = tl.arange(0, 4) * 0 + 2
        tl.store(out_ptr + tl.arange(0, 4), _haar_triton._offset3(plane, rows, cols, s_plane, s_row, s_col))

    out = torch.zeros(4, dtype=torch.int64)
    sp, sr, sc = 2**30, 2**30 + 7, 2**30 - 3
    probe[(1,)](out, sp, sr, sc)
    want = [5 * sp + r * sr + 2 * sc for r in range(3, 7)]
    assert out.tolist() == want


_COMPILE_SCRIPT = r"""
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from d4k_kernels import settings
from d4k_kernels.ops import _haar_triton as kt
for kern, levels in [(kt._haar_fwd_kernel, 1), (kt._haar_fwd_kernel, 3), (kt._haar_inv_kernel, 2)]:
    names = kern.arg_names
    const = {"LEVELS": levels, "MODE": 1, "ACC": tl.float32}
    const["BR"], const["BC"] = kt._tiles(levels, settings.current().haar_tile)
    sig = {n: "constexpr" if n in const else ("*bf16" if n.endswith("_ptr") else "i32") for n in names}
    consts = {(names.index(n),): v for n, v in const.items() if n in names}
    k = triton.compile(ASTSource(fn=kern, signature=sig, constexprs=consts),
                       target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    assert "ptx" in k.asm
print("compiled")
"""


@pytest.mark.skipif(not backend.HAS_TRITON, reason="needs triton")
def test_kernels_compile_for_sm90():
    """Compile both kernels for an H100 target (sm_90; no GPU needed) at a few group sizes, in a
    process without the interpreter: the GPU compiler accepts what the interpreter runs."""
    from gpu_compile import assert_compiles_for_sm90

    assert_compiles_for_sm90(_COMPILE_SCRIPT)


@pytest.mark.cuda
def test_cuda_matches_cpu_path_and_cpu_path_on_cuda(seed):
    dev = torch.device("cuda")
    for dtype in (torch.float32, torch.bfloat16):
        for shape, J, mode in [((2, 16, 512, 512), 3, "zero"), ((1, 3, 333, 517), 4, "reflect"), ((8, 16, 512, 512), 1, "zero")]:
            x = torch.randn(shape, device=dev).to(dtype)
            yl, yh = d4k_kernels.dwt2(x, J, mode)
            with backend.prefer("cpu"):
                cl, ch = d4k_kernels.dwt2(x, J, mode)   # plain torch on the CUDA tensor
                crec = d4k_kernels.idwt2((cl, ch), output_size=shape[-2:])
            assert cl.is_cuda
            # both round fp32 results once; fp32 association differs, so bf16 may differ by 1 ulp
            rtol, atol = (1e-6, 1e-5) if dtype == torch.float32 else (2**-7, 1e-6)
            for a, b in [(yl, cl)] + list(zip(yh, ch)):
                torch.testing.assert_close(a.float(), b.float(), rtol=rtol, atol=atol)
            rec = d4k_kernels.idwt2((yl, yh), output_size=shape[-2:])
            torch.testing.assert_close(rec.float(), crec.float(), rtol=rtol, atol=atol)
            if dtype == torch.float32:
                torch.testing.assert_close(rec, x, rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
def test_cuda_over_2_31_elements(seed):
    """A bf16 tensor of 2^31 + 2^16 elements: the last plane's last rows are right."""
    dev = torch.device("cuda")
    x = torch.empty((2, 1, 32768, 32769), dtype=torch.bfloat16, device=dev)
    assert x.numel() > 2**31
    x.uniform_(-1, 1)
    yl, yh = d4k_kernels.dwt2(x, levels=1, mode="symmetric")
    tail = x[1, 0, -4:, -5:].double().cpu()            # rows 32764.., cols 32764..32768 (odd, padded)
    rl, rh = ref.dwt2_ref(tail, 1, "symmetric")
    close(yl[1, 0, -2:, -3:], rl, rtol=2**-8, atol=1e-6)
    close(yh[0][1, 0, :, -2:, -3:], rh[0], rtol=2**-8, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# the two CPU implementations: the compiled levels (csrc/haar.cpp) and the torch fallback
# ---------------------------------------------------------------------------------------------
def test_compiled_cpu_levels_are_built_here():
    """CI has a compiler and ninja: the "cpu" backend must run the C++ levels there (else the
    fallback alone would be tested)."""
    from d4k_kernels import _build

    if _build.ext_disabled():
        pytest.skip("D4K_NO_EXT=1")
    assert backend.extension("haar") is not None, _build.failure("haar")


@pytest.mark.parametrize("compiled", [True, False], ids=["cpp", "torch-fallback"])
@pytest.mark.parametrize("mode", MODES)
def test_cpu_implementations_match_pywt(monkeypatch, seed, mode, compiled):
    if not compiled:
        fake_extensions(monkeypatch, haar=None)
    elif backend.extension("haar") is None:
        pytest.skip("compiled CPU levels unavailable")
    with backend.prefer("cpu"):
        assert backend.choose("haar_dwt2", torch.zeros(2, 2)) == ("cpp" if compiled else "torch")
        for H, W in [(2, 2), (2, 7), (5, 2), (3, 3), (7, 9), (12, 10), random_shape(2, 40)]:
            J = haar.max_levels(H, W)
            x = torch.randn(3, H, W, dtype=torch.float64)
            yl, yh = d4k_kernels.dwt2(x, levels=J, mode=mode)
            pl, ph = pywt_dec(x, J, mode)
            close(yl, pl, what=f"yl {H}x{W} J={J}")
            for k, (a, b) in enumerate(zip(yh, ph)):
                close(a, b, what=f"yh[{k}] {H}x{W} J={J}")
            close(d4k_kernels.idwt2((yl, yh), mode=mode, output_size=(H, W)), x, what=f"roundtrip {H}x{W}")
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            x = torch.randn(2, 4, 11, 14).to(dtype)
            yl, yh = d4k_kernels.dwt2(x, levels=2, mode=mode)
            pl, ph = pywt_dec(x.double(), 2, mode)
            assert yl.dtype == dtype and all(d.dtype == dtype for d in yh)
            tol = 1e-6 if dtype == torch.float32 else 1e-2
            close(yl, pl, rtol=tol, atol=tol * 4, what=f"{dtype} yl")
        x = torch.randn(2, 7, 6, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t: d4k_kernels.dwt2(t, levels=2, mode=mode)[1][0], (x,))
