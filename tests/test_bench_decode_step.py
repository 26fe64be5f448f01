"""benchmarks/bench_decode_step.py ``--avx2-only`` (#26 d5, the AVX2-only proxy): our side's native library is
asked for with ``-mno-avx512f`` appended to ``CC`` once (the compiler command the cache is keyed by), and a build
with other than 8-lane kernels, or a llama-bench whose CMakeCache.txt shows GGML_NATIVE / AVX-512 / AVX-VNNI /
AMX switched on (or no cache at all), is refused in one line instead of being reported as AVX2-only."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
AVX2_CACHE = {"CMAKE_BUILD_TYPE:STRING": "Release", "GGML_NATIVE:BOOL": "OFF", "GGML_AVX:BOOL": "ON",
              "GGML_AVX2:BOOL": "ON", "GGML_FMA:BOOL": "ON", "GGML_F16C:BOOL": "ON", "GGML_BMI2:BOOL": "ON",
              "GGML_AVX512:BOOL": "OFF", "GGML_AVX512_VNNI:BOOL": "OFF", "GGML_AVX_VNNI:BOOL": "OFF",
              "GGML_AMX_INT8:BOOL": "OFF", "GGML_OPENMP:BOOL": "ON"}


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_decode_step_under_test", BENCH / "bench_decode_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Lib:  # the one entry point check_avx2_only reads
    def __init__(self, lanes: int):
        self.lanes = lanes

    def gm_quant_lanes(self) -> int:
        return self.lanes


def llama_build(tmp_path: Path, **on: str) -> str:
    """A fake llama-bench in tmp_path/build/bin with a CMakeCache.txt of AVX2_CACHE updated by ``on``."""
    (tmp_path / "build" / "bin").mkdir(parents=True)
    values = {**AVX2_CACHE, **{f"{k}:BOOL": v for k, v in on.items()}}
    (tmp_path / "build" / "CMakeCache.txt").write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    exe = tmp_path / "build" / "bin" / "llama-bench"
    exe.write_text("")
    return str(exe)


def test_cc_gets_the_flag_once_keeping_the_compiler(bench, monkeypatch):
    monkeypatch.delenv("CC", raising=False)
    assert bench.avx2_only_compiler() == "cc -mno-avx512f"
    assert bench.avx2_only_compiler() == "cc -mno-avx512f"  # not twice
    monkeypatch.setenv("CC", "ccache gcc-12")
    assert bench.avx2_only_compiler() == "ccache gcc-12 -mno-avx512f"


def test_an_avx2_build_on_both_sides_is_named(bench, monkeypatch, tmp_path):
    monkeypatch.setenv("CC", "cc -mno-avx512f")
    line = bench.check_avx2_only(Lib(8), llama_build(tmp_path))
    assert "cc -mno-avx512f" in line and "8-lane" in line
    assert "GGML_AVX2" in line and "GGML_FMA" in line and "NATIVE" not in line
    assert "llama.cpp" not in bench.check_avx2_only(Lib(8), None)


@pytest.mark.parametrize("on", ["GGML_NATIVE", "GGML_AVX512", "GGML_AVX512_VNNI", "GGML_AVX_VNNI", "GGML_AMX_INT8"])
def test_a_llama_build_with_more_than_avx2_is_refused(bench, monkeypatch, tmp_path, on):
    monkeypatch.setenv("CC", "cc -mno-avx512f")
    with pytest.raises(SystemExit) as e:
        bench.check_avx2_only(Lib(8), llama_build(tmp_path, **{on: "ON"}))
    assert str(e.value).startswith("error: --avx2-only:") and on in str(e.value) and "\n" not in str(e.value)


def test_unknown_llama_flags_and_wide_kernels_are_refused(bench, monkeypatch, tmp_path):
    monkeypatch.setenv("CC", "cc")
    with pytest.raises(SystemExit, match="16-lane kernels"):
        bench.check_avx2_only(Lib(16), None)
    exe = tmp_path / "llama-bench"
    exe.write_text("")
    with pytest.raises(SystemExit, match="not an AVX2-only build"):
        bench.check_avx2_only(Lib(8), str(exe))
