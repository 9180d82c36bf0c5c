"""The demo stays off the library's import path, its command line refuses bad options clearly, the block
table is the model's, and the version and build description live in one place each."""
import importlib.metadata
import subprocess
import sys

import pytest
import torch

import mnv2_kernels
from mnv2_kernels import _build_config
from mnv2_kernels.demo import cli
from mnv2_kernels.models import mobilenet_v2, mobilenet_v2_blocks
from mnv2_kernels.models.mobilenet_v2 import InvertedResidual


def test_import_does_not_load_the_demo():
    code = "import sys, mnv2_kernels; print(any(m.startswith('mnv2_kernels.demo') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("argv, words", [
    (["--device", "mps"], "invalid choice: 'mps'"),
    (["--dtype", "foo"], "invalid choice: 'foo'"),
    (["--backends", "bogus"], "invalid choice: 'bogus'"),
    (["--batches", "0"], "positive integers"),
    (["--device", "cpu", "--dtype", "float16"], "no fused CPU kernel computes float16"),
    (["--device", "cpu", "--backends", "cuda"], "--backends cuda needs --device cuda"),
])
def test_cli_refuses_bad_options_with_a_message(argv, words, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given when no GPU is visible")
def test_cli_cuda_without_gpu_says_so(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--device", "cuda"])
    assert exc.value.code == 2 and "no CUDA GPU is visible" in capsys.readouterr().err


def test_every_cli_option_has_help():
    for action in cli.build_parser()._actions:
        assert action.help, f"option {action.option_strings} has no help text"


def test_results_table_ratios_are_side_by_side():
    rows = [(1, "eager", 40.0), (1, "eager_cl", 20.0), (1, "compile_freezing", 10.0), (1, "fused", 5.0),
            (32, "eager_cl", 300.0), (32, "fused", 100.0)]
    lines = cli.results_table(rows, "t")
    fused1 = next(l for l in lines if l.startswith("| 1 | **fused**"))
    assert "| 8.00x | 4.00x | 2.00x |" in fused1 and "| 200.0 |" in fused1      # 1 / 5 ms = 200 img/s
    fused32 = next(l for l in lines if l.startswith("| 32 | **fused**"))
    assert fused32.endswith("|  | 3.00x |  |")                                  # no eager / compile at 32


def test_block_table_is_the_models():
    model = mobilenet_v2()
    x = torch.zeros(1, 3, 224, 224)
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append((i[0].shape, o.shape)))
             for m in model.modules() if isinstance(m, InvertedResidual)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    table = mobilenet_v2_blocks(distinct=False)
    assert len(table) == len(seen) == 17
    for b, (xin, yout) in zip(table, seen):
        assert tuple(xin) == (1, b.cin, b.h, b.h) and tuple(yout) == (1, b.cout, b.h_out, b.h_out)
    distinct = mobilenet_v2_blocks()
    assert len(distinct) == 12 and [b.name for b in distinct][4] == "5-6"
    # NOTES / RESULTS roofline figures: block 3 moves 77.1 MB and does 13.18 GFLOP at batch 256 fp16
    b3 = distinct[2]
    assert round(b3.fused_bytes(256, 2) / 1e6, 1) == 77.1 and round(b3.flops(256) / 1e9, 2) == 13.18


def test_version_in_one_place():
    assert importlib.metadata.version("mnv2_kernels") == mnv2_kernels.__version__ == _build_config.version()


def test_build_description_is_source_hashed():
    fp = _build_config.cpu_fingerprint()
    assert fp == _build_config.cpu_fingerprint() and len(fp) == 16
    assert _build_config.cpu_sources() and all(s.endswith(".cpp") for s in _build_config.cpu_sources())


_BLOCK_BUILT_EXT = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "mnv2_kernels._C":
            raise ImportError("blocked: as after a plain (build-isolated) pip install -e .")
sys.meta_path.insert(0, Block())
import mnv2_kernels._ext as e
print("CPU_EXT", e.CPU_EXT is not None, e.CPU_EXT_ERROR)
import torch, mnv2_kernels
print("ISA", torch.ops.mnv2.cpu_isa())
"""


@pytest.mark.slow
def test_first_import_build_is_cached_and_later_imports_skip_the_compiler(tmp_path):
    """A plain `pip install -e .` has no extension: the first import compiles the CPU kernel once (~2 min)
    into a cache named by the sources' hash; a second import loads it without the compiler (issue 12)."""
    env = dict(__import__("os").environ, MNV2_EXT_CACHE=str(tmp_path), MNV2_JIT_BUILD="1")
    first = subprocess.run([sys.executable, "-c", _BLOCK_BUILT_EXT], capture_output=True, text=True, env=env,
                           timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "compiling the CPU extension once" in first.stderr and "CPU_EXT True None" in first.stdout
    second = subprocess.run([sys.executable, "-c", _BLOCK_BUILT_EXT], capture_output=True, text=True, env=env,
                            timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "CPU_EXT True None" in second.stdout and "ISA " in second.stdout
    assert "compiling" not in second.stderr and "CUDA_HOME" not in second.stderr, second.stderr[-2000:]
