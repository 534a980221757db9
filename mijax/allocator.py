"""Host memory of the ``mijax`` program: an allocator that keeps XLA:CPU's per-execution buffers.

XLA:CPU allocates each execution's temporaries afresh: one block of ~230-270 MB for a training step of the bench
UNet (C = 16, batch 64), and tens of MB more inside its convolutions. glibc serves blocks over 32 MB with
``mmap`` and returns them with ``munmap`` (and, allocated by a thread other than the main one, every block over
64 MB, whatever its tunables say), so every step touched ~67,000 new 4 KiB pages, each a page fault that stalls
the thread while the kernel fills the page with zeros. Two remedies, the first that applies
(:func:`restart_environment`):

* **mimalloc** (the ``mimalloc`` extra: the cmeel-mimalloc wheel's ``libmimalloc.so.3``), put in place of
  malloc with ``LD_PRELOAD``, with ``MIMALLOC_PURGE_DELAY=-1`` (freed memory is kept for the next
  allocation, never handed back to the kernel) and ``MIMALLOC_ALLOW_LARGE_OS_PAGES=1`` (2 MiB transparent huge
  pages): the next step reuses the same pages, ~70 faults a step, and the kernel's zeroing (~30 ms of CPU a
  step on 2 cores) is gone; the bench UNet's Adam step (conv="onednn") took ~10% less time than with glibc's
  huge pages. The cost: the process keeps its peak memory (the bench step's process, 1.3-1.4 GB at most
  against 1.0 GB). A ``LD_PRELOAD`` of the user's own, or
  ``MIMALLOC_*`` settings of the user's own, are kept.
* else glibc's ``glibc.malloc.hugetlb=1`` tunable: those blocks come in 2 MiB transparent huge pages, ~300
  faults a step instead (the kernel still zeroes as much), and the UNet's Adam step took ~15% less time than
  with glibc's default. Only on Linux with glibc 2.35 or later and transparent huge pages in
  ``madvise`` mode; a ``glibc.malloc.hugetlb`` of the user's own is kept.

The numbers do not change, only where the memory comes from. Both are read when a process starts, so
:func:`restart_with_allocator` starts the program again (``os.execv``, the same process id, arguments and
environment, the variables above added; Ctrl-C and SIGTERM held back meanwhile and delivered by
:func:`release_signals`) before anything else runs. ``MIJAX_MALLOC=glibc`` skips mimalloc,
``MIJAX_HUGE_PAGES=0`` (or ``MIJAX_MALLOC=0``) any restart. Programs the restarted process starts inherit the
setting, except where :func:`environment_as_started` gives them the environment as it was (``mijax bench`` runs
the PyTorch baselines so, as published). This module imports nothing heavy: it runs before JAX is imported.
"""
from __future__ import annotations

import json
import os
import platform
import signal
import sys
from pathlib import Path
from typing import Mapping, Optional, Sequence

TUNABLE = "glibc.malloc.hugetlb"
SETTING = TUNABLE + "=1"
ENV = "MIJAX_HUGE_PAGES"  # "0": never restart
MALLOC_ENV = "MIJAX_MALLOC"  # "mimalloc" (the default), "glibc": no mimalloc; "0": never restart
MALLOC_CHOICES = ("", "mimalloc", "glibc", "0")
# set by the restart: the variables it changed, as they were before (JSON; null where unset)
BEFORE_ENV = "MIJAX_ENV_BEFORE"
MIMALLOC_LIBRARY = ("cmeel.prefix", "lib", "libmimalloc.so.3")  # inside site-packages, from cmeel-mimalloc
MIMALLOC_SETTINGS = {"MIMALLOC_PURGE_DELAY": "-1", "MIMALLOC_ALLOW_LARGE_OS_PAGES": "1"}
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")
MIN_GLIBC = (2, 35)  # the first glibc with the hugetlb tunable
# held back across the restart (a signal mask survives execv) until the new program's handlers are in place
HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def thp_mode(path: Path = THP_MODE) -> Optional[str]:
    """The kernel's transparent huge page mode (``always``, ``madvise`` or ``never``); None where unknown."""
    try:
        text = path.read_text()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def glibc_version() -> Optional[tuple[int, int]]:
    """(major, minor) of the C library this Python runs on when it is glibc, else None."""
    name, version = platform.libc_ver()
    parts = version.split(".")
    if name != "glibc" or len(parts) < 2 or not all(p.isdigit() for p in parts[:2]):
        return None
    return int(parts[0]), int(parts[1])


def tunables_with_huge_pages(environ: Mapping[str, str], system: str, glibc: Optional[tuple[int, int]],
                             mode: Optional[str]) -> Optional[str]:
    """The ``GLIBC_TUNABLES`` value to restart with, or None to run as it is (see the module doc)."""
    current = environ.get("GLIBC_TUNABLES", "")
    if (environ.get(ENV, "").strip() == "0" or TUNABLE in current or system != "linux" or glibc is None
            or glibc < MIN_GLIBC or mode != "madvise"):
        return None
    return f"{current}:{SETTING}" if current else SETTING


def mimalloc_library(paths: Optional[Sequence[str]] = None) -> Optional[str]:
    """The path of the cmeel-mimalloc wheel's ``libmimalloc.so.3`` on ``paths`` (default ``sys.path``), or None."""
    for entry in sys.path if paths is None else paths:
        candidate = os.path.abspath(os.path.join(entry or ".", *MIMALLOC_LIBRARY))
        # LD_PRELOAD separates its entries with spaces and colons: a path with either cannot be named there
        if os.path.isfile(candidate) and not any(c in candidate for c in " :"):
            return candidate
    return None


def _preloads_an_allocator(preload: str) -> bool:
    return any("malloc" in os.path.basename(p) for p in preload.replace(":", " ").split())


def restart_environment(environ: Mapping[str, str], system: str, glibc: Optional[tuple[int, int]],
                        mode: Optional[str], mimalloc: Optional[str]) -> Optional[dict[str, str]]:
    """The variables to restart with (module doc), or None to run as it is.

    ``mimalloc``: the library's path where installed (:func:`mimalloc_library`); ``glibc``, ``mode``: the C
    library's version and the kernel's transparent huge page mode, for the glibc tunable otherwise."""
    choice = environ.get(MALLOC_ENV, "").strip().lower()
    if choice not in MALLOC_CHOICES:
        raise ValueError(f"{MALLOC_ENV} must be one of mimalloc, glibc or 0, got {environ[MALLOC_ENV]!r}")
    if BEFORE_ENV in environ or environ.get(ENV, "").strip() == "0" or choice == "0" or system != "linux":
        return None
    preload = environ.get("LD_PRELOAD", "")
    if _preloads_an_allocator(preload):  # the user's own allocator: kept (and glibc's tunable would not apply)
        return None
    if mimalloc is not None and choice != "glibc":
        out = {"LD_PRELOAD": f"{mimalloc} {preload}".strip()}
        out.update({k: v for k, v in MIMALLOC_SETTINGS.items() if k not in environ})
        return out
    value = tunables_with_huge_pages(environ, system, glibc, mode)
    return None if value is None else {"GLIBC_TUNABLES": value}


def restart_with_allocator(argv: Optional[Sequence[str]] = None) -> None:
    """Start this program again with mimalloc or glibc's huge-page tunable where that helps (module doc);
    returns only when it does not restart (or the restart failed, which changes nothing). ``argv``: the
    interpreter's arguments after the executable (default ``sys.orig_argv[1:]``: the same ``-m`` module or
    script and its options). Call it first, before threads or open resources that an ``execv`` would drop."""
    changes = restart_environment(os.environ, sys.platform, glibc_version(), thp_mode(), mimalloc_library())
    if not changes:
        return
    args = list(sys.orig_argv[1:] if argv is None else argv)
    before = {name: os.environ.get(name) for name in changes}
    os.environ.update(changes)
    os.environ[BEFORE_ENV] = json.dumps(before)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, *args])
    except OSError:  # run on as it is
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        del os.environ[BEFORE_ENV]
        for name, value in before.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value


def release_signals() -> None:
    """In a program started again by :func:`restart_with_allocator`: let through the Ctrl-C and SIGTERM held
    back across the restart (one that came meanwhile is delivered now). Call it once the program's own
    handlers are in place, before any thread starts (threads inherit the mask)."""
    if BEFORE_ENV in os.environ:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)


def environment_as_started(environ: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """A copy of ``environ`` (default ``os.environ``) with the variables that :func:`restart_with_allocator`
    set as they were before: for programs that should run as the user would run them."""
    env = dict(os.environ if environ is None else environ)
    if BEFORE_ENV in env:
        try:
            before = json.loads(env.pop(BEFORE_ENV))
        except ValueError:
            before = {}
        for name, value in (before.items() if isinstance(before, dict) else ()):
            if value is None:
                env.pop(name, None)
            else:
                env[name] = str(value)
    return env


def in_use(environ: Optional[Mapping[str, str]] = None) -> str:
    """Which allocator this process runs on, as the restart left it: ``mimalloc``, ``glibc hugetlb=1`` or
    ``glibc`` (for benchmark records)."""
    env = os.environ if environ is None else environ
    if "mimalloc" in env.get("LD_PRELOAD", ""):
        return "mimalloc"
    return "glibc hugetlb=1" if SETTING in env.get("GLIBC_TUNABLES", "") else "glibc"


def changed_by_restart(environ: Optional[Mapping[str, str]] = None) -> bool:
    """Whether this process runs on another allocator than the one it was started with (the restart's)."""
    env = os.environ if environ is None else environ
    return in_use(env) != in_use(environment_as_started(env))
