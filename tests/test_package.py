"""The package's own plumbing: backend dispatch, input checks, lazy exports, the d4k CLI and the
benchmark runner."""
import json
import subprocess
import sys

import pytest
import torch
from conftest import setenv

import d4k_kernels
from d4k_kernels import _checks, backend, settings
from d4k_kernels import benchmarks as bm
from d4k_kernels.cli import main as cli_main


# --- backend ---------------------------------------------------------------------------------

def test_cpu_tensor_runs_cpu_path_when_preferred():
    with backend.prefer("cpu"):
        assert backend.select(torch.zeros(1)) == "cpu"


def test_default_for_cpu_tensor_follows_interpreter(monkeypatch):
    setenv(monkeypatch, "D4K_BACKEND")
    expected = "triton" if (backend.HAS_TRITON and backend.interpreter_enabled()) else "cpu"
    assert backend.select(torch.zeros(1)) == expected


def test_prefer_triton_without_interpreter_raises(monkeypatch):
    setenv(monkeypatch, "TRITON_INTERPRET", "0")
    setenv(monkeypatch, "D4K_TRITON_INTERPRET", "0")
    with backend.prefer("triton"):
        with pytest.raises(RuntimeError, match="cannot run here"):
            backend.select(torch.zeros(1))


def test_prefer_is_scoped_and_nests():
    with backend.prefer("cpu"):
        with backend.prefer("triton"):
            assert backend._preference() == "triton"
        assert backend._preference() == "cpu"


def test_env_backend(monkeypatch):
    setenv(monkeypatch, "D4K_BACKEND", "cpu")
    assert backend.select(torch.zeros(1)) == "cpu"
    with pytest.raises(ValueError, match="D4K_BACKEND.*gpu-please"):
        setenv(monkeypatch, "D4K_BACKEND", "gpu-please")


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="'cuda'"):
        with backend.prefer("cuda"):
            pass


@pytest.mark.cuda
def test_cuda_tensor_runs_triton():
    assert backend.select(torch.zeros(1, device="cuda")) == "triton"


# --- input checks ----------------------------------------------------------------------------

def test_check_tensor_messages():
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got list"):
        _checks.check_tensor([1.0], "x")
    with pytest.raises(TypeError, match="int64"):
        _checks.check_tensor(torch.zeros(2, dtype=torch.int64), "x", dtypes=_checks.FLOAT_DTYPES)
    with pytest.raises(ValueError, match=r"\(2,\)"):
        _checks.check_tensor(torch.zeros(2), "x", min_dim=2)
    with pytest.raises(ValueError, match="4 dimensions"):
        _checks.check_tensor(torch.zeros(2, 3), "x", ndim=4)
    x = torch.zeros(1, 2)
    assert _checks.check_tensor(x, "x", dtypes=_checks.FLOAT_DTYPES, ndim=2) is x


def test_check_same_and_scalars():
    a, b = torch.zeros(2, 3), torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r"b has shape \(3, 2\) but a has shape \(2, 3\)"):
        _checks.check_same([a, b], ["a", "b"])
    with pytest.raises(TypeError, match="dtype"):
        _checks.check_same([a, a.double()], ["a", "c"], dtype=True)
    with pytest.raises(TypeError, match="True"):
        _checks.check_int(True, "levels")
    with pytest.raises(ValueError, match="levels must be >= 1, got 0"):
        _checks.check_int(0, "levels", lo=1)
    with pytest.raises(ValueError, match="'bogus'"):
        _checks.check_choice("bogus", "mode", ("zero", "symmetric"))
    assert _checks.check_int(3, "levels", lo=1, hi=5) == 3


# --- lazy exports ----------------------------------------------------------------------------

def test_every_promised_export_resolves():
    missing = []
    for name in d4k_kernels._EXPORTS:
        try:
            getattr(d4k_kernels, name)
        except (AttributeError, ImportError) as e:
            missing.append(f"{name}: {e}")
    assert not missing, missing


def test_unknown_attribute():
    with pytest.raises(AttributeError, match="no_such_op"):
        d4k_kernels.no_such_op  # noqa: B018


# --- CLI and benchmark runner ----------------------------------------------------------------

def test_cli_version_and_help(capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["--version"])
    assert e.value.code == 0
    assert d4k_kernels.__version__ in capsys.readouterr().out
    assert cli_main([]) == 2


def test_cli_bench_unknown_family():
    with pytest.raises(SystemExit, match="unknown op family 'nope'"):
        cli_main(["bench", "--op", "nope", "--device", "cpu", "--quick"])


def test_bench_runner_table_and_json(tmp_path, monkeypatch, capsys):
    calls = {"d4k": 0, "peer": 0}

    def fake_cases(device, quick=False):
        def d4k():
            calls["d4k"] += 1
            return torch.ones(64).sum()

        def peer():
            calls["peer"] += 1
            return torch.ones(64).cumsum(0)

        def broken():
            raise RuntimeError("peer exploded")

        return [bm.Case("fake (64,) fp32", "d4k", d4k, 256), bm.Case("fake (64,) fp32", "torch", peer, 256),
                bm.Case("fake (64,) fp32", "broken-peer", broken)]

    monkeypatch.setattr(bm, "collect", lambda ops, device, quick: fake_cases(device, quick))
    out = tmp_path / "r.json"
    assert bm.main(ops=["haar"], device="cpu", quick=True, json_path=str(out)) == 0
    text = capsys.readouterr().out
    assert "fake (64,) fp32" in text and "summary" in text and "failed" in text and "peer exploded" in text
    data = json.loads(out.read_text())
    rows = {r["impl"]: r for r in data["rows"]}
    assert rows["d4k"]["ms"] > 0 and rows["torch"]["ms"] > 0
    assert rows["d4k"]["vs_d4k"] == pytest.approx(1.0)
    assert rows["broken-peer"]["error"].startswith("RuntimeError")
    assert calls["d4k"] >= 4 and calls["peer"] >= 4  # warm-up + at least 3 timed calls


def test_bench_summary_scales_sampled_peers(capsys):
    """A peer timed on a sample of the group's work (work_fraction) is compared by its time for the
    whole work: 10 ms for a quarter is 40 ms, 40x a 1 ms d4k (not 10x); so is its bandwidth share."""
    rows = [{"group": "g", "impl": "d4k", "ms": 1.0, "error": ""},
            {"group": "g", "impl": "slow peer, 1/4 sample", "ms": 10.0, "work_fraction": 0.25, "error": ""},
            {"group": "g", "impl": "other peer", "ms": 30.0, "error": ""}]
    bm._print_summary(rows)
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith("g ")][0]
    assert "other peer" in line and "30.0000" in line and "30.00x" in line  # 30 ms beats 40 ms
    rows[2]["ms"] = 50.0
    bm._print_summary(rows)
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith("g ")][0]
    assert "slow peer" in line and "40.0000" in line and "40.00x" in line
    assert bm._whole(rows[1]) == 40.0 and bm._whole(rows[0]) == 1.0


def test_time_case_median_is_positive():
    ms = bm.time_case(lambda: torch.randn(1000).sort(), torch.device("cpu"), quick=True)
    assert 0 < ms < 1000


def test_resolve_device_rejects_bad_name():
    with pytest.raises(ValueError, match="'tpu'"):
        bm.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            bm.resolve_device("cuda")
        assert cli_main(["bench", "--device", "cuda"]) == 2


def test_d4k_entry_point_runs_as_module():
    r = subprocess.run([sys.executable, "-m", "d4k_kernels.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "bench" in r.stdout and "eval" in r.stdout


def test_settings_parse_every_variable_and_name_bad_values(monkeypatch):
    for var in settings.VARIABLES:
        setenv(monkeypatch, var.env)
    cur = settings.current()
    assert cur.haar_tile == (32, 128) and cur.haar_warps == 4 and cur.wlf_tile == (8, 64)
    assert cur.glcm_cuda is True and cur.glcm_cuda_threads == 512 and cur.backend is None and not cur.no_ext
    setenv(monkeypatch, "D4K_HAAR_TILE", "16x256")
    setenv(monkeypatch, "D4K_HAAR_WARPS", "8")
    setenv(monkeypatch, "D4K_NO_EXT", "yes")
    assert settings.current().haar_tile == (16, 256) and settings.current().haar_warps == 8
    assert settings.current().no_ext is True
    for name, value, msg in (("D4K_HAAR_TILE", "24x128", "D4K_HAAR_TILE rows must be a power of two, got 24"),
                             ("D4K_WLF_TILE", "big", "D4K_WLF_TILE must look like 32x128"),
                             ("D4K_GLCM_WARPS", "6", "D4K_GLCM_WARPS must be a power of two, got 6"),
                             ("D4K_GLCM_CUDA_THREADS", "300", "D4K_GLCM_CUDA_THREADS must be one of 256, 512, 1024"),
                             ("D4K_NO_EXT", "maybe", "D4K_NO_EXT must be 1/0"),
                             ("D4K_GLCM_KERNEL", "fast", "D4K_GLCM_KERNEL must be one of hist, dot")):
        with pytest.raises(ValueError, match=msg):
            setenv(monkeypatch, name, value)
        setenv(monkeypatch, name)


def test_settings_override_is_scoped():
    before = settings.current()
    with settings.override(glcm_cuda=False, haar_warps=2) as s:
        assert s is settings.current() and not s.glcm_cuda and s.haar_warps == 2
    assert settings.current() == before
    with pytest.raises(TypeError, match="unknown setting.*no_such"):
        with settings.override(no_such=1):
            pass


def test_no_library_module_reads_d4k_variables_itself():
    """settings.py is the one reader of D4K_* variables; the docs list every one of them."""
    import pathlib
    import re

    pkg = pathlib.Path(d4k_kernels.__file__).parent
    for f in pkg.rglob("*.py"):
        if f.name == "settings.py":
            continue
        src = f.read_text()
        assert not re.search(r"environ(\.get)?[\[(]\s*[\"']D4K_", src), f"{f} reads a D4K_ variable itself"
    doc = (pkg.parent / "docs" / "settings.md").read_text()
    for var in settings.VARIABLES:
        assert f"`{var.env}`" in doc, f"docs/settings.md does not list {var.env}"


def test_choose_walks_each_ops_list(monkeypatch):
    """backend.choose: the CPU list ("cpp" when its extension loads, else "torch"), float64 to torch for
    ops without float64 kernels, a refused "fits" falls through, unknown ops are named."""
    x = torch.zeros(2, 2)
    real = backend.extension
    with backend.prefer("cpu"):
        monkeypatch.setattr(backend, "extension", lambda name, device=None: object())
        assert backend.choose("haar_dwt2", x) == "cpp" and backend.choose("glcm_counts", x) == "cpp"
        assert backend.choose("wavelet_energy", x) == "torch" and backend.choose("upconv_tail", x) == "torch"
        assert backend.choose("glcm_patch_scores", x, fits=lambda impl, ext: impl != "cpp") == "torch"
        monkeypatch.setattr(backend, "extension", lambda name, device=None: None)
        assert backend.choose("haar_dwt2", x) == "torch"
    monkeypatch.setattr(backend, "extension", real)
    if backend.HAS_TRITON and backend.interpreter_enabled():
        with backend.prefer("triton"):
            assert backend.choose("group_norm_apply", x) == "triton"
            assert backend.choose("group_norm_apply", x.double()) == "torch"
            assert backend.choose("haar_dwt2", x.double()) == "triton"
    with pytest.raises(ValueError, match="unknown op 'nope'"):
        backend.choose("nope", x)


def test_vae_memory_table_repeats_and_psnr(monkeypatch, capsys):
    """The VAE table (bench/gpu_check.sh's VAE step) on the CPU's quick configs: a case with runs=2 is
    timed twice and reports the median with its range; the exact tiled decode's PSNR is against the
    group's untiled decode (fp32: far above the 60 dB of the bf16 target)."""
    pytest.importorskip("diffusers")
    import d4k_kernels.benchmarks.vae as V

    specs = V._specs
    monkeypatch.setattr(V, "_specs", lambda d, q: [dict(s, runs=2) for s in specs(d, q)])
    rows = V.memory_table(torch.device("cpu"), quick=True, only=r"Flux.*(diffusers|d4k exact tiled)$")
    assert [r["impl"] for r in rows] == ["diffusers", "d4k exact tiled"]
    assert all(r["ms"] > 0 and not r["error"] and "median of 2" in r["info"] for r in rows)
    assert rows[1]["psnr_db"] > 100 and "tile " in rows[1]["info"]
    assert "median of 2" in capsys.readouterr().out


def test_cli_usage_error_is_one_line_and_exit_2(monkeypatch, capsys):
    """A subcommand that raises cli.UsageError prints one line naming the command and exits with 2."""
    import types

    from d4k_kernels import cli

    fake = types.ModuleType("d4k_fake_cmd")

    def add_parser(sub):
        p = sub.add_parser("fake")
        p.set_defaults(func=lambda args: (_ for _ in ()).throw(cli.UsageError("no such folder: 'x'")))

    fake.add_parser = add_parser
    monkeypatch.setitem(sys.modules, "d4k_fake_cmd", fake)
    monkeypatch.setattr(cli, "SUBCOMMANDS", cli.SUBCOMMANDS + ("d4k_fake_cmd",))
    assert cli.main(["fake"]) == 2
    err = capsys.readouterr().err
    assert err == "d4k fake: error: no such folder: 'x'\n"
