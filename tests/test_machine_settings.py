"""The memory budget (sizes, estimates, chunks) and the thread policy."""

from __future__ import annotations

import os

import pytest

from dreamsmith.engine import memory
from dreamsmith.engine import threads as thread_policy
from dreamsmith.engine.overrides import make_config
from dreamsmith.engine.threads import apply_thread_policy, cores_for_us, follow_load, free_cores, usable_cores
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
        assert "OMP_WAIT_POLICY" not in os.environ  # a passive wait costs an idle run 1.7x
        assert apply_thread_policy() == 2  # the environment now says 2
        assert thread_policy._following is None  # a count the user chose is kept
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert 1 <= apply_thread_policy() <= usable_cores()
        assert thread_policy._following is not None
        assert 1 <= free_cores() <= usable_cores()
        with pytest.raises(ConfigError, match="--threads"):
            apply_thread_policy(0)
    finally:
        thread_policy._following = None
        __import__("torch").set_num_threads(threads_before)


def counters(wall: float, own: float, idle: int, total: int) -> dict[str, float]:
    return {"wall": wall, "own": own, "idle": idle, "total": total}


def test_cores_for_us_leave_out_only_what_other_processes_use():
    # 2 CPUs over 10 s at 100 jiffies/s: 2000 jiffies. Both cores busy, 20 CPU-seconds of them ours: all free.
    assert cores_for_us(counters(0, 0, 0, 0), counters(10, 20, 0, 2000), usable=2, cpus=2) == 2
    # both cores busy, 10 CPU-seconds ours: another process holds a core
    assert cores_for_us(counters(0, 0, 0, 0), counters(10, 10, 0, 2000), usable=2, cpus=2) == 1
    # one core idle, the other ours: nobody else
    assert cores_for_us(counters(0, 0, 0, 0), counters(10, 10, 1000, 2000), usable=2, cpus=2) == 2
    # 8 CPUs, 3 busy with others, our affinity allows 4: 4; never fewer than 1
    assert cores_for_us(counters(0, 0, 0, 0), counters(10, 0, 5000, 8000), usable=4, cpus=8) == 4
    assert cores_for_us(counters(0, 0, 0, 0), counters(10, 0, 0, 8000), usable=4, cpus=8) == 1


def test_follow_load_recounts_at_most_every_interval_and_only_for_a_chosen_count(monkeypatch):
    torch = __import__("torch")
    threads_before = torch.get_num_threads()
    readings = iter([counters(100.0, 0, 0, 0), counters(100.5, 1, 0, 100), counters(103.0, 2.5, 0, 600)])
    monkeypatch.setattr(thread_policy, "_counters", lambda: next(readings))
    monkeypatch.setattr(thread_policy, "usable_cores", lambda: 2)
    monkeypatch.setattr(thread_policy.os, "cpu_count", lambda: 2)
    try:
        torch.set_num_threads(2)
        thread_policy._following = thread_policy._counters()
        assert follow_load() is None  # 0.5 s later: too soon to recount
        assert follow_load() == 1 and torch.get_num_threads() == 1  # 3 s: both busy, 2.5 CPU-s ours
        thread_policy._following = None
        assert follow_load() is None  # the user's count is never changed
    finally:
        thread_policy._following = None
        torch.set_num_threads(threads_before)
