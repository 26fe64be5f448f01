"""The native build (issue #8, items 4c, 4d, 10): a cached library that is truncated, garbled or
unloadable is rebuilt before ctypes maps it; the build has a timeout and says it is compiling; a C
file that no longer compiles fails the native tests instead of skipping them; the decode step on
two threads equals the PyTorch path.

The compilers here are small shell scripts (CC): one copies the session's good library to the -o
path, so a "rebuild" costs a file copy, not a compile."""
from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from genmodels import native
from genmodels.files import file_sha256
from genmodels.native.decoder import FusedDecodeStep
from tests.helpers.tiny import left_pad_mask, random_ids, tiny_model

ROOT = Path(__file__).parents[2]
pytestmark = pytest.mark.skipif(not native.enabled(), reason="GENMODELS_NATIVE=0: native kernels disabled on purpose")
GOOD = native.library() if native.enabled() else None  # the session's library (built once, or cached)


def test_native_kernels_build_unless_disabled():
    """On CI the kernels must build: a C file that no longer compiles is a failure, not a skip."""
    assert native.library() is not None, f"native kernels did not build: {native.unavailable_reason()}"


# ---- helpers --------------------------------------------------------------------------------------
@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """A process-state as before the first use, with a private cache."""
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setenv("GENMODELS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("GENMODELS_NATIVE_BUILD_TIMEOUT", raising=False)
    return tmp_path


def fake_cc(tmp_path: Path, monkeypatch, body: str) -> Path:
    """CC = a script running ``body`` with $OUT = its -o argument; each build appends to runs.log."""
    script, runs = tmp_path / "fake-cc.sh", tmp_path / "runs.log"
    script.write_text(f"""#!/bin/sh
case "$1" in --version) echo "fake-cc 1.0"; exit 0;; esac
OUT=""; PREV=""
for a in "$@"; do [ "$PREV" = "-o" ] && OUT="$a"; PREV="$a"; done
echo build >> "{runs}"
{body}
""")
    script.chmod(0o755)
    monkeypatch.setenv("CC", str(script))
    return runs


def copy_cc(tmp_path, monkeypatch) -> Path:
    assert GOOD is not None, native.unavailable_reason()
    return fake_cc(tmp_path, monkeypatch, f'cp "{GOOD._name}" "$OUT"')


def builds(runs: Path) -> int:
    return len(runs.read_text().splitlines()) if runs.exists() else 0


def seed_cache(monkeypatch) -> Path:
    """Put a good library and its sidecar where this CC's build is cached (as a past run left them),
    without loading it here: a path this process has mapped is never mapped again by dlopen."""
    lib = native._cache_path([os.environ["CC"]])
    shutil.copyfile(GOOD._name, lib)
    native._write_sidecar(lib, lib.stat().st_size, file_sha256(lib))
    return lib


def spy_loads(monkeypatch) -> list[tuple[str, bytes]]:
    """Record each ctypes.CDLL call with the bytes of the file it maps."""
    seen, real = [], ctypes.CDLL
    monkeypatch.setattr(ctypes, "CDLL", lambda name, *a, **k: seen.append((name, Path(name).read_bytes()))
                        or real(name, *a, **k))
    return seen


# ---- 4c: the cached library is checked before it is mapped ----------------------------------------
@pytest.mark.parametrize("damage", ["truncated", "same-size-garbage", "no-sidecar"])
def test_damaged_cached_library_is_rebuilt_before_loading(fresh, monkeypatch, caplog, damage):
    runs = copy_cc(fresh, monkeypatch)
    lib = seed_cache(monkeypatch)
    good = lib.read_bytes()
    if damage == "truncated":
        lib.write_bytes(good[: len(good) // 3])
    elif damage == "same-size-garbage":
        lib.write_bytes(good[:4096] + bytes(len(good) - 4096))
    else:
        Path(str(lib) + ".json").unlink()
    loads = spy_loads(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="genmodels.native"):
        assert native.library() is not None
    assert builds(runs) == 1
    assert [data for _, data in loads] == [good]  # only the rebuilt file was ever mapped
    said = [r.getMessage() for r in caplog.records if "rebuilding" in r.getMessage()]
    assert len(said) == 1 and str(lib) in said[0], said
    assert json.loads(Path(str(lib) + ".json").read_text())["size"] == len(good)


def test_sound_cached_library_is_loaded_without_a_build(fresh, monkeypatch):
    runs = copy_cc(fresh, monkeypatch)
    seed_cache(monkeypatch)
    assert native.library() is not None and builds(runs) == 0


def test_unloadable_cached_library_is_deleted_and_rebuilt_once(fresh, monkeypatch, caplog):
    runs = copy_cc(fresh, monkeypatch)
    lib = seed_cache(monkeypatch)
    good = lib.read_bytes()
    bad = b"not an ELF file" * 100  # a sidecar that agrees with it: only the loader can tell
    lib.write_bytes(bad)
    native._write_sidecar(lib, len(bad), file_sha256(lib))
    with caplog.at_level(logging.WARNING, logger="genmodels.native"):
        assert native.library() is not None
    assert builds(runs) == 1 and lib.read_bytes() == good
    assert any("cannot be loaded" in r.getMessage() and str(lib) in r.getMessage() for r in caplog.records)


def test_library_the_loader_keeps_refusing_falls_back_after_one_rebuild(fresh, monkeypatch):
    runs = fake_cc(fresh, monkeypatch, 'printf "garbage" > "$OUT"')
    assert native.library() is None
    assert builds(runs) == 2  # built, refused, deleted, rebuilt once, refused: PyTorch path
    assert "invalid ELF header" in native.unavailable_reason() or native.unavailable_reason()


# ---- 4d: timeout and the compiling notice ----------------------------------------------------------
def test_build_timeout_falls_back_with_the_reason(fresh, monkeypatch):
    """The compiler's children are killed too (sleep is not exec'd: it holds the output pipes)."""
    runs = fake_cc(fresh, monkeypatch, "sleep 300")
    monkeypatch.setenv("GENMODELS_NATIVE_BUILD_TIMEOUT", "0.3")
    assert native.library() is None
    reason = native.unavailable_reason()
    assert "timed out after 0.3 s" in reason and "GENMODELS_NATIVE_BUILD_TIMEOUT" in reason
    assert builds(runs) == 1  # no second attempt with other flags


def test_bad_build_timeout_is_named(fresh, monkeypatch):
    monkeypatch.setenv("GENMODELS_NATIVE_BUILD_TIMEOUT", "soon")
    assert native.library() is None
    assert "GENMODELS_NATIVE_BUILD_TIMEOUT='soon' must be a positive number" in native.unavailable_reason()


def test_slow_build_says_it_is_compiling(fresh, monkeypatch, capfd):
    """The compiler waits until the notice was given (bounded: at most ~60 s), then succeeds."""
    flag = fresh / "notice-given"
    real = native._say_compiling
    monkeypatch.setattr(native, "_say_compiling", lambda: (real(), flag.touch()))
    monkeypatch.setattr(native, "NOTICE_AFTER_S", 0.05)
    assert GOOD is not None
    fake_cc(fresh, monkeypatch, f'i=0; while [ ! -e "{flag}" ] && [ $i -lt 3000 ]; do sleep 0.02; i=$((i+1)); done\n'
                                f'cp "{GOOD._name}" "$OUT"')
    assert native.library() is not None
    err = capfd.readouterr().err
    assert err.count(native.NOTICE) == 1 and "compiling native CPU kernels" in err


# ---- 10 (i): a broken C file is a failure, not a skip ---------------------------------------------------
def broken_sources(tmp_path: Path) -> Path:
    src = Path(shutil.copytree(native.SOURCE, tmp_path / "csrc"))
    ops = src / "ops.c"
    ops.write_text(ops.read_text() + "\nint gm_broken(void) { return 1 +; }\n")  # a syntax error, in a copy
    return src


def test_broken_c_source_gives_the_compiler_error(fresh, monkeypatch):
    monkeypatch.setattr(native, "SOURCE", broken_sources(fresh))
    monkeypatch.setattr(native, "_FLAG_SETS", (["-O0"],))  # fail fast: the error is in the source, not the flags
    assert native.library() is None
    assert "ops.c" in native.unavailable_reason() and "error" in native.unavailable_reason()


def test_broken_c_source_fails_the_native_tests_instead_of_skipping(fresh):
    code = ("import pathlib, sys, pytest, genmodels.native as n\n"
            "n.SOURCE, n._FLAG_SETS = pathlib.Path(sys.argv[1]), (['-O0'],)\n"
            "sys.exit(pytest.main(['-q', '-p', 'no:randomly', '-p', 'no:cacheprovider', '-p', 'no:xdist',"
            " 'tests/native/test_encoder.py', '-k', 'test_equals_encode and post and 1']))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("GENMODELS_NATIVE", "CC")}
    env.update(GENMODELS_CACHE=str(fresh / "cache"), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", code, str(broken_sources(fresh))], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stdout[-3000:]  # 1: tests failed (0 would be a green run of skips)
    assert "native kernels did not build" in r.stdout and "ops.c" in r.stdout


# ---- 10 (ii): the decode step on two threads equals the PyTorch path ------------------------------------
def test_decode_step_on_two_threads_equals_torch():
    model, t, steps = tiny_model("llama"), 9, 6
    ids, mask = random_ids(3, t), left_pad_mask([9, 6, 3], t)  # (B, T)
    full_mask = torch.ones(3, t + steps, dtype=torch.long)
    full_mask[:, :t] = mask
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.inference_mode():
            cache, cache2 = model.new_cache(3, t + steps), model.new_cache(3, t + steps)
            h = model.hidden_states(ids, attention_mask=mask, cache=cache)
            model.hidden_states(ids, attention_mask=mask, cache=cache2)
            got_ids = want_ids = model.head(h[:, -1]).argmax(-1)  # (B,)
            step = FusedDecodeStep(model, cache, 3)
            pos = mask.cumsum(-1)[:, -1] - 1  # (B,)
            for s in range(steps):
                pos = pos + 1
                want = model(want_ids[:, None], attention_mask=full_mask[:, :t + s + 1], position_ids=pos[:, None],
                             cache=cache2)[:, -1]  # (B, V)
                got = step(got_ids, pos, full_mask)
                torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
                got_ids, want_ids = got.argmax(-1), want.argmax(-1)
                assert torch.equal(got_ids, want_ids)
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads
