"""The mijax program's restart with glibc's huge-page tunable (mijax.allocator)."""
import os
import signal
import subprocess
import sys

import pytest

from mijax import allocator

HELPS = dict(system="linux", glibc=(2, 36), mode="madvise")


@pytest.mark.parametrize("environ, overrides, expected", [
    ({}, {}, "glibc.malloc.hugetlb=1"),
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, {}, "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"),
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, {}, None),  # the user's own setting wins (and ends the loop)
    ({"MIJAX_HUGE_PAGES": "0"}, {}, None),
    ({"MIJAX_HUGE_PAGES": "1"}, {}, "glibc.malloc.hugetlb=1"),
    ({}, {"system": "darwin"}, None),
    ({}, {"glibc": None}, None),  # musl or another C library
    ({}, {"glibc": (2, 34)}, None),  # before the tunable
    ({}, {"mode": "always"}, None),  # every large block has huge pages already
    ({}, {"mode": "never"}, None),
    ({}, {"mode": None}, None),
])
def test_the_restart_only_where_huge_pages_help(environ, overrides, expected):
    assert allocator.tunables_with_huge_pages(environ, **{**HELPS, **overrides}) == expected


def test_the_kernel_mode_is_read_from_its_brackets(tmp_path):
    path = tmp_path / "enabled"
    path.write_text("always [madvise] never\n")
    assert allocator.thp_mode(path) == "madvise"
    path.write_text("[always] madvise never\n")
    assert allocator.thp_mode(path) == "always"
    assert allocator.thp_mode(tmp_path / "missing") is None


@pytest.fixture
def helpful(monkeypatch):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv(allocator.ENV, raising=False)
    monkeypatch.delenv(allocator.BEFORE_ENV, raising=False)  # restored after the test, as the two above
    monkeypatch.setattr(allocator.sys, "platform", "linux")
    monkeypatch.setattr(allocator, "glibc_version", lambda: (2, 36))
    monkeypatch.setattr(allocator, "thp_mode", lambda: "madvise")
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    yield
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a faked exec returns with the signals still held


def test_the_restart_runs_the_same_arguments_with_the_tunable(helpful, monkeypatch):
    calls = []
    monkeypatch.setattr(allocator.os, "execv", lambda path, args: calls.append(
        (path, args, dict(os.environ), signal.pthread_sigmask(signal.SIG_BLOCK, []))))
    allocator.restart_with_huge_pages(["-m", "mijax.cli", "sample", "--n", "8"])
    (path, args, environ, held), = calls
    assert path == sys.executable and args == [sys.executable, "-m", "mijax.cli", "sample", "--n", "8"]
    assert environ["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    assert {signal.SIGINT, signal.SIGTERM} <= held  # Ctrl-C waits across the exec
    # what the restarted program hands on to programs that should run as the user would run them
    assert "GLIBC_TUNABLES" not in allocator.environment_as_started(environ)
    assert allocator.BEFORE_ENV not in allocator.environment_as_started(environ)


def test_the_environment_as_started_restores_the_users_tunables(helpful, monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    monkeypatch.setattr(allocator.os, "execv", lambda path, args: None)
    allocator.restart_with_huge_pages(["-c", "pass"])
    assert os.environ["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    env = allocator.environment_as_started()
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2" and allocator.BEFORE_ENV not in env
    assert allocator.environment_as_started({"PATH": "/bin"}) == {"PATH": "/bin"}  # never restarted: as it is


def test_a_failed_restart_leaves_the_environment_as_it_was(helpful, monkeypatch):
    def fail(path, args):
        raise OSError("no exec here")

    monkeypatch.setattr(allocator.os, "execv", fail)
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    allocator.restart_with_huge_pages(["-c", "pass"])
    assert "GLIBC_TUNABLES" not in os.environ and allocator.BEFORE_ENV not in os.environ
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before  # nothing held back any more


def test_a_real_restart_happens_once_and_keeps_the_arguments():
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", allocator.ENV, allocator.BEFORE_ENV)}
    code = ("import os, sys; from mijax import allocator; allocator.restart_with_huge_pages(); "
            "print(os.environ.get('GLIBC_TUNABLES', ''), sys.argv[1:])")
    out = subprocess.run([sys.executable, "-c", code, "a", "b"], env=env, capture_output=True, text=True, timeout=60,
                         check=True).stdout.strip()
    expected = allocator.tunables_with_huge_pages(env, sys.platform, allocator.glibc_version(), allocator.thp_mode())
    assert out == f"{expected or ''} ['a', 'b']"


def test_a_ctrl_c_held_back_across_the_restart_reaches_the_programs_handler():
    """A restarted program starts with SIGINT and SIGTERM blocked (the mask survives execv); the one that
    came meanwhile is delivered once mijax's handlers are in place: the usual one line and status 130."""
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env.update({allocator.BEFORE_ENV: "", allocator.ENV: "0"})  # as restarted; no second restart
    code = ("import os, signal, sys; signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}); "
            "os.kill(os.getpid(), signal.SIGINT); sys.argv = ['mijax', 'train', '--help']; "
            "from mijax.cli import main; sys.exit(main())")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 130 and proc.stderr.strip() == "mijax: interrupted", proc.stderr
    assert proc.stdout == ""  # interrupted before the help was printed
