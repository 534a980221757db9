"""Host memory of the ``mijax`` program: glibc's malloc with transparent huge pages for XLA:CPU's buffers.

XLA:CPU allocates each execution's temporaries afresh: one block of ~270 MB for a training step of the bench
UNet (C = 16, batch 64), and tens of MB more inside its convolutions. glibc serves blocks over 32 MB with
``mmap`` and returns them with ``munmap``, so every step touched ~67,000 new 4 KiB pages, each a page fault
that stalls the thread while the kernel fills the page with zeros. With glibc's ``glibc.malloc.hugetlb=1``
tunable those blocks are backed by 2 MiB transparent huge pages: ~300 faults a step instead (the system time,
~0.11 s a step, stays: the kernel zeroes as much), and the UNet's Adam step on 2 cores of an Intel Xeon took
243-249 ms instead of 285-287 ms (BENCHMARKS.md); the numbers do not change (only where the memory comes from
does).

glibc reads its tunables when a process starts, so :func:`restart_with_huge_pages` starts the program again
(``os.execv``, the same process id, arguments and environment, ``GLIBC_TUNABLES`` extended; Ctrl-C and SIGTERM
held back meanwhile and delivered by :func:`release_signals`) before anything else runs, where it helps:
Linux with glibc 2.35 or later and transparent huge pages in ``madvise`` mode (with ``always`` every large
block has them already; with ``never`` nothing would change). A setting of
``glibc.malloc.hugetlb`` of the user's own is kept, and ``MIJAX_HUGE_PAGES=0`` turns the restart off.
Programs the restarted process starts inherit the setting, except where :func:`environment_as_started` gives
them the environment as it was (``mijax bench`` runs the PyTorch baselines so, as published). This module
imports nothing heavy: it runs before JAX is imported.
"""
from __future__ import annotations

import os
import platform
import signal
import sys
from pathlib import Path
from typing import Mapping, Optional, Sequence

TUNABLE = "glibc.malloc.hugetlb"
SETTING = TUNABLE + "=1"
ENV = "MIJAX_HUGE_PAGES"  # "0": never restart
BEFORE_ENV = "MIJAX_GLIBC_TUNABLES_BEFORE"  # set by the restart: GLIBC_TUNABLES as it was ("" if unset)
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


def restart_with_huge_pages(argv: Optional[Sequence[str]] = None) -> None:
    """Start this program again with glibc's huge-page tunable where it helps (module doc); returns only when
    it does not restart (or the restart failed, which changes nothing). ``argv``: the interpreter's arguments
    after the executable (default ``sys.orig_argv[1:]``: the same ``-m`` module or script and its options).
    Call it first, before threads or open resources that an ``execv`` would drop."""
    value = tunables_with_huge_pages(os.environ, sys.platform, glibc_version(), thp_mode())
    if value is None:
        return
    args = list(sys.orig_argv[1:] if argv is None else argv)
    before = os.environ.get("GLIBC_TUNABLES")
    os.environ["GLIBC_TUNABLES"], os.environ[BEFORE_ENV] = value, before or ""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, *args])
    except OSError:  # run on as it is
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        del os.environ[BEFORE_ENV]
        if before is None:
            del os.environ["GLIBC_TUNABLES"]
        else:
            os.environ["GLIBC_TUNABLES"] = before


def release_signals() -> None:
    """In a program started again by :func:`restart_with_huge_pages`: let through the Ctrl-C and SIGTERM held
    back across the restart (one that came meanwhile is delivered now). Call it once the program's own
    handlers are in place, before any thread starts (threads inherit the mask)."""
    if BEFORE_ENV in os.environ:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)


def environment_as_started(environ: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """A copy of ``environ`` (default ``os.environ``) with ``GLIBC_TUNABLES`` as it was before
    :func:`restart_with_huge_pages` extended it: for programs that should run as the user would run them."""
    env = dict(os.environ if environ is None else environ)
    if BEFORE_ENV in env:
        before = env.pop(BEFORE_ENV)
        if before:
            env["GLIBC_TUNABLES"] = before
        else:
            env.pop("GLIBC_TUNABLES", None)
    return env
