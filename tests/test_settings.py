"""Thread defaults follow the CPUs a process may really use (affinity, container quota)
and are shared among the server's worker processes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import app.settings as settings_module
from app.settings import Settings, cpu_budget

AFFINITY = len(os.sched_getaffinity(0))


def _v2(root: Path, text: str) -> Path:
    (root / "cpu.max").write_text(text)
    return root


def _v1(root: Path, quota: str, period: str, sub: str = "cpu") -> Path:
    (root / sub).mkdir()
    (root / sub / "cpu.cfs_quota_us").write_text(quota)
    (root / sub / "cpu.cfs_period_us").write_text(period)
    return root


def test_no_cgroup_files_means_the_affinity(tmp_path: Path) -> None:
    assert cpu_budget(cgroup_root=tmp_path) == AFFINITY


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max 100000\n", AFFINITY),
        ("100000 100000\n", 1),
        ("50000 100000\n", 1),  # half a CPU still gets one thread
        ("150000 100000\n", min(2, AFFINITY)),  # a fraction rounds up
        ("6400000 100000\n", AFFINITY),  # a quota above the affinity changes nothing
        ("garbage\n", AFFINITY),
    ],
)
def test_cgroup_v2_quota_caps_the_budget(tmp_path: Path, text: str, expected: int) -> None:
    assert cpu_budget(cgroup_root=_v2(tmp_path, text)) == expected


@pytest.mark.parametrize(
    ("quota", "period", "sub", "expected"),
    [
        ("100000", "100000", "cpu", 1),
        ("-1", "100000", "cpu", AFFINITY),
        ("100000", "100000", "cpu,cpuacct", 1),
        ("x", "100000", "cpu", AFFINITY),
    ],
)
def test_cgroup_v1_quota_caps_the_budget(
    tmp_path: Path, quota: str, period: str, sub: str, expected: int
) -> None:
    assert cpu_budget(cgroup_root=_v1(tmp_path, quota, period, sub)) == expected


@pytest.mark.parametrize(
    ("budget", "workers", "threads"), [(16, 1, 16), (16, 4, 4), (16, 13, 1), (2, 4, 1)]
)
def test_thread_defaults_split_the_budget_among_workers(
    monkeypatch: pytest.MonkeyPatch, budget: int, workers: int, threads: int
) -> None:
    monkeypatch.setattr(settings_module, "cpu_budget", lambda: budget)
    s = Settings(workers=workers)
    assert (s.threads, s.decode_threads) == (threads, threads)


def test_workers_from_the_environment_shape_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings_module, "cpu_budget", lambda: 8)
    monkeypatch.setenv("MOBILENET_WORKERS", "2")
    assert Settings().threads == 4


def test_explicit_threads_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings_module, "cpu_budget", lambda: 16)
    monkeypatch.setenv("MOBILENET_THREADS", "3")
    s = Settings(workers=8, decode_threads=5)
    assert (s.threads, s.decode_threads) == (3, 5)


def test_multi_worker_serve_tells_the_workers_how_many_share_the_cpus(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``serve --workers 4``: every worker process rebuilds Settings from the environment,
    so the count must be there, or each would take all the CPUs for its threads."""
    import app.server as server

    seen: dict = {}
    monkeypatch.setenv("MOBILENET_WORKERS", "1")  # so teardown undoes what run() sets
    monkeypatch.setattr(settings_module, "cpu_budget", lambda: 16)
    monkeypatch.setattr(server.uvicorn, "run", lambda *a, **kw: seen.update(kw, env=Settings()))
    monkeypatch.setattr(server, "configure_logging", lambda **_: None)
    server.run(Settings(workers=4))
    assert seen["workers"] == 4 and seen["factory"] is True
    assert (seen["env"].workers, seen["env"].threads) == (4, 4)


def test_every_setting_is_documented_in_the_readme_table() -> None:
    """A setting a user cannot find is one they cannot use: each has a README row."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    prefix = Settings.model_config["env_prefix"]
    rows = {
        line.split("|")[1].strip(" `") for line in readme.splitlines() if line.startswith("| `")
    }
    undocumented = [
        (prefix + name).upper()
        for name in Settings.model_fields
        if (prefix + name).upper() not in rows
    ]
    assert not undocumented, f"add these to the README's settings table: {undocumented}"
