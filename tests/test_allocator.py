"""The mijax program's restart with mimalloc or glibc's huge-page tunable (mijax.allocator)."""
import json
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


LIB = "/site/cmeel.prefix/lib/libmimalloc.so.3"
MIMALLOC = {"LD_PRELOAD": LIB, "MIMALLOC_PURGE_DELAY": "-1", "MIMALLOC_ALLOW_LARGE_OS_PAGES": "1"}


@pytest.mark.parametrize("environ, overrides, expected", [
    ({}, {}, MIMALLOC),
    ({}, {"mimalloc": None}, {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}),  # not installed: glibc's pages
    ({"MIJAX_MALLOC": "glibc"}, {}, {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}),
    ({"MIJAX_MALLOC": "0"}, {}, None),
    ({"MIJAX_HUGE_PAGES": "0"}, {}, None),
    ({"MIJAX_ENV_BEFORE": "{}"}, {}, None),  # restarted once already
    ({"LD_PRELOAD": "/x/libtrace.so"}, {}, dict(MIMALLOC, LD_PRELOAD=f"{LIB} /x/libtrace.so")),
    ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, {}, None),  # an allocator of the user's own: kept, no tunable
    ({"MIMALLOC_PURGE_DELAY": "100"}, {}, {k: v for k, v in MIMALLOC.items() if k != "MIMALLOC_PURGE_DELAY"}),
    ({}, {"system": "darwin"}, None),
    ({}, {"mimalloc": None, "mode": "always"}, None),
])
def test_the_restart_prefers_mimalloc_where_installed(environ, overrides, expected):
    args = {**HELPS, "mimalloc": LIB, **overrides}
    assert allocator.restart_environment(environ, **args) == expected


def test_an_unknown_allocator_choice_is_refused_before_anything_runs():
    with pytest.raises(ValueError, match="MIJAX_MALLOC must be one of mimalloc, glibc or 0, got 'jemalloc'"):
        allocator.restart_environment({"MIJAX_MALLOC": "jemalloc"}, **HELPS, mimalloc=LIB)
    env = {k: v for k, v in os.environ.items() if k != allocator.BEFORE_ENV}
    env[allocator.MALLOC_ENV] = "jemalloc"
    proc = subprocess.run([sys.executable, "-c", "import sys; from mijax.cli import main; sys.argv = ['mijax', "
                           "'train', '--help']; sys.exit(main())"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("mijax: error: MIJAX_MALLOC must be"), proc.stderr
    assert proc.stdout == ""


def test_mimalloc_is_found_on_the_path_unless_its_path_cannot_be_preloaded(tmp_path):
    lib = tmp_path / "site" / "cmeel.prefix" / "lib"
    lib.mkdir(parents=True)
    (lib / "libmimalloc.so.3").write_bytes(b"")
    assert allocator.mimalloc_library([str(tmp_path / "elsewhere"), str(tmp_path / "site")]) == str(
        lib / "libmimalloc.so.3")
    assert allocator.mimalloc_library([str(tmp_path / "elsewhere")]) is None
    spaced = tmp_path / "a b" / "cmeel.prefix" / "lib"
    spaced.mkdir(parents=True)
    (spaced / "libmimalloc.so.3").write_bytes(b"")
    assert allocator.mimalloc_library([str(tmp_path / "a b")]) is None


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
    monkeypatch.setattr(allocator, "mimalloc_library", lambda: None)
    for name in ("LD_PRELOAD", allocator.MALLOC_ENV, *allocator.MIMALLOC_SETTINGS):
        monkeypatch.delenv(name, raising=False)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    yield
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a faked exec returns with the signals still held


def test_the_restart_runs_the_same_arguments_with_the_tunable(helpful, monkeypatch):
    calls = []
    monkeypatch.setattr(allocator.os, "execv", lambda path, args: calls.append(
        (path, args, dict(os.environ), signal.pthread_sigmask(signal.SIG_BLOCK, []))))
    allocator.restart_with_allocator(["-m", "mijax.cli", "sample", "--n", "8"])
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
    allocator.restart_with_allocator(["-c", "pass"])
    assert os.environ["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    env = allocator.environment_as_started()
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2" and allocator.BEFORE_ENV not in env
    assert allocator.environment_as_started({"PATH": "/bin"}) == {"PATH": "/bin"}  # never restarted: as it is


def test_the_restart_preloads_mimalloc_and_hands_on_the_environment_as_it_was(helpful, monkeypatch):
    monkeypatch.setattr(allocator, "mimalloc_library", lambda: LIB)
    monkeypatch.setenv("LD_PRELOAD", "/x/libtrace.so")
    calls = []
    monkeypatch.setattr(allocator.os, "execv", lambda path, args: calls.append(dict(os.environ)))
    allocator.restart_with_allocator(["-c", "pass"])
    (environ,) = calls
    assert environ["LD_PRELOAD"] == f"{LIB} /x/libtrace.so" and environ["MIMALLOC_PURGE_DELAY"] == "-1"
    assert "GLIBC_TUNABLES" not in environ
    assert json.loads(environ[allocator.BEFORE_ENV]) == {"LD_PRELOAD": "/x/libtrace.so", "MIMALLOC_PURGE_DELAY": None,
                                                         "MIMALLOC_ALLOW_LARGE_OS_PAGES": None}
    started = allocator.environment_as_started(environ)
    assert started["LD_PRELOAD"] == "/x/libtrace.so"
    assert not {"MIMALLOC_PURGE_DELAY", "MIMALLOC_ALLOW_LARGE_OS_PAGES", allocator.BEFORE_ENV} & set(started)
    assert allocator.in_use(environ) == "mimalloc" and allocator.in_use(started) == "glibc"


def test_a_failed_restart_leaves_the_environment_as_it_was(helpful, monkeypatch):
    def fail(path, args):
        raise OSError("no exec here")

    monkeypatch.setattr(allocator.os, "execv", fail)
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    environ = dict(os.environ)
    allocator.restart_with_allocator(["-c", "pass"])
    assert dict(os.environ) == environ  # every variable as it was, none added, none lost
    monkeypatch.setattr(allocator, "mimalloc_library", lambda: LIB)
    monkeypatch.setenv("LD_PRELOAD", "/x/libtrace.so")
    environ = dict(os.environ)
    allocator.restart_with_allocator(["-c", "pass"])  # the same with mimalloc's variables
    assert dict(os.environ) == environ
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before  # nothing held back any more


def test_a_real_restart_happens_once_and_keeps_the_arguments():
    """Here, for real: the variables the rule gives are set once (no second restart), the arguments kept, and
    where it preloads mimalloc, mimalloc is the library mapped into the restarted process."""
    keep = ("GLIBC_TUNABLES", "LD_PRELOAD", allocator.ENV, allocator.MALLOC_ENV, allocator.BEFORE_ENV,
            *allocator.MIMALLOC_SETTINGS)
    env = {k: v for k, v in os.environ.items() if k not in keep}
    code = ("import json, os, sys; from mijax import allocator; allocator.restart_with_allocator(); "
            "maps = open('/proc/self/maps').read() if os.path.exists('/proc/self/maps') else ''; "
            "print(json.dumps([{k: os.environ.get(k) for k in json.loads(os.environ.get(allocator.BEFORE_ENV, '{}'))}, "
            "'libmimalloc' in maps, sys.argv[1:]]))")
    out = subprocess.run([sys.executable, "-c", code, "a", "b"], env=env, capture_output=True, text=True, timeout=60,
                         check=True)
    changed, mapped, args = json.loads(out.stdout.strip())
    expected = allocator.restart_environment(env, sys.platform, allocator.glibc_version(), allocator.thp_mode(),
                                             allocator.mimalloc_library())
    assert changed == (expected or {}) and args == ["a", "b"]
    assert mapped == ("LD_PRELOAD" in (expected or {}))
    assert "cannot be preloaded" not in out.stderr


def test_a_ctrl_c_held_back_across_the_restart_reaches_the_programs_handler():
    """A restarted program starts with SIGINT and SIGTERM blocked (the mask survives execv); the one that
    came meanwhile is delivered once mijax's handlers are in place: the usual one line and status 130."""
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env.update({allocator.BEFORE_ENV: "{}", allocator.ENV: "0"})  # as restarted; no second restart
    code = ("import os, signal, sys; signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}); "
            "os.kill(os.getpid(), signal.SIGINT); sys.argv = ['mijax', 'train', '--help']; "
            "from mijax.cli import main; sys.exit(main())")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 130 and proc.stderr.strip() == "mijax: interrupted", proc.stderr
    assert proc.stdout == ""  # interrupted before the help was printed
