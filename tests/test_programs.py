"""Compiled programs kept between runs: the same results, no second compile."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hubquant import programs, quantizers


@jax.jit
def _halves(x):
    return x * 0.5, jnp.sum(x)


class _Counting:
    """``_halves`` that counts its compilations."""

    __qualname__ = "_Counting"

    def __init__(self):
        self.lowered = 0

    def lower(self, *args, **statics):
        self.lowered += 1
        return _halves.lower(*args, **statics)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HUBQUANT_CACHE", str(tmp_path))
    return tmp_path / "programs"


def _run(program, x):
    return [np.asarray(part) for part in program(x)]


def test_a_kept_program_loads_without_compiling_and_gives_the_same_results(cache):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    jitted = _Counting()
    first = programs.compiled(jitted, __file__, (x,))
    second = programs.compiled(jitted, __file__, (x,))
    assert jitted.lowered == 1
    assert len(list(cache.iterdir())) == 1
    for a, b, want in zip(_run(first, x), _run(second, x), _halves(x), strict=True):
        np.testing.assert_array_equal(a, np.asarray(want))
        np.testing.assert_array_equal(b, np.asarray(want))


def test_another_shape_is_another_program(cache):
    jitted = _Counting()
    programs.compiled(jitted, __file__, (np.zeros((3, 4), np.float32),))
    programs.compiled(jitted, __file__, (np.zeros((4, 4), np.float32),))
    assert jitted.lowered == 2
    assert len(list(cache.iterdir())) == 2


def test_an_unreadable_kept_file_is_compiled_again(cache):
    x = np.ones((2, 2), np.float32)
    jitted = _Counting()
    programs.compiled(jitted, __file__, (x,))
    (kept,) = cache.iterdir()
    kept.write_bytes(b"\x02\x00\x00\x00not a program")
    program = programs.compiled(jitted, __file__, (x,))
    assert jitted.lowered == 2
    np.testing.assert_array_equal(_run(program, x)[0], x * 0.5)


def test_int4_from_a_kept_slab_program_is_bitwise_the_same(cache, monkeypatch):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((40, 200)).astype(np.float32)
    columns = quantizers.Columns.of(np.ascontiguousarray(w.T))
    results = []
    for _ in range(2):  # compiled and kept, then loaded from the cache
        monkeypatch.setattr(quantizers, "_PROGRAMS", {})
        results.append(quantizers.quantize_int4(columns, 64, symmetric=False, clip=True))
    assert len(list(cache.iterdir())) == 1
    for part in ("codes", "scale", "zero"):
        np.testing.assert_array_equal(getattr(results[0], part), getattr(results[1], part))


def test_a_cache_that_cannot_be_written_only_costs_a_compile(tmp_path, monkeypatch):
    blocked = tmp_path / "a_file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("HUBQUANT_CACHE", str(blocked))
    x = np.ones((2, 3), np.float32)
    jitted = _Counting()
    for _ in range(2):
        program = programs.compiled(jitted, __file__, (x,))
        np.testing.assert_array_equal(_run(program, x)[0], x * 0.5)
    assert jitted.lowered == 2 and blocked.read_text() == "not a folder"
