"""The memory budget (sizes, estimates, chunks) and the thread policy."""

from __future__ import annotations

import os

import pytest

from dreamsmith.engine import memory
from dreamsmith.engine.overrides import make_config
from dreamsmith.engine.threads import apply_thread_policy, free_cores, usable_cores
from dreamsmith.errors import ConfigError


def test_memory_sizes_parse_with_units_and_refuse_nonsense():
    assert memory.parse_memory_size("4G") == 4 * 2**30
    assert memory.parse_memory_size("512MiB") == 512 * 2**20
    assert memory.parse_memory_size("1.5gb") == int(1.5 * 2**30)
    assert memory.parse_memory_size(str(2**30)) == 2**30
    for bad in ("lots", "4Q", "-1G", "1M"):
        with pytest.raises(ConfigError, match="--memory-budget"):
            memory.parse_memory_size(bad)


def test_chunks_shrink_with_the_budget_and_the_cost_per_point():
    assert memory.chunk_points(1000, budget=4 * 2**30) == int(2**30) // 1000
    assert memory.chunk_points(2000, budget=4 * 2**30) == int(2**30) // 2000
    assert memory.chunk_points(10**9, budget=2**30) == memory.MIN_CHUNK_POINTS


def test_presets_fit_a_4_gb_budget_and_an_oversized_render_is_refused_by_name(monkeypatch):
    monkeypatch.setenv(memory.ENV, "4G")
    for preset in ("dreamfusion", "magic3d", "toy", "toy-mesh"):
        config = make_config("a red cube", preset=preset)
        assert memory.check_memory(config, "") == 4 * 2**30
    with pytest.raises(ConfigError, match=r"stage 'coarse' needs about .* camera.resolution"):
        make_config("a red cube", preset="dreamfusion", overrides=["camera.resolution=1024"])
    with pytest.raises(ConfigError, match="export.isosurface_resolution"):
        make_config("a red cube", overrides=["export.isosurface_resolution=1024"])


def test_hash_grid_entries_count_dense_levels_exactly_and_hashed_levels_as_full_tables():
    from dreamsmith.representations.configs import HashGridConfig

    config = HashGridConfig(n_levels=3, n_features_per_level=2, log2_hashmap_size=12, base_resolution=8,
                            per_level_scale=2.0)
    # resolutions 8, 16, 32: (9^3 = 729) dense, then 17^3 and 33^3 exceed 4096 entries
    assert memory.hash_grid_entries(config) == 2 * (729 + 4096 + 4096)


def test_thread_policy_takes_the_option_then_the_environment_then_the_free_cores(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads_before = __import__("torch").get_num_threads()
    try:
        assert apply_thread_policy(2) == 2 and os.environ["OMP_NUM_THREADS"] == "2"
        assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
        assert apply_thread_policy() == 2  # the environment now says 2
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert 1 <= apply_thread_policy() <= usable_cores()
        assert 1 <= free_cores() <= usable_cores()
        with pytest.raises(ConfigError, match="--threads"):
            apply_thread_policy(0)
    finally:
        __import__("torch").set_num_threads(threads_before)
