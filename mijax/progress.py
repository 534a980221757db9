"""Progress bars for long work (training, sampling, recursive studies): one helper, off by default.

:func:`bar` returns a tqdm bar, or a stand-in that does nothing when progress is off or this is not
process 0 of a multi-process job, so callers never test for None.
"""
from __future__ import annotations


class _Silent:
    """The interface of a tqdm bar that callers use, doing nothing."""

    n = 0

    def update(self, count: int = 1) -> None:
        self.n += count

    def set_postfix(self, **kwargs) -> None:
        pass

    def set_description(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def bar(enabled: bool, total: int, desc: str, unit: str = "step", initial: int = 0):
    """A progress bar of ``total`` units starting at ``initial``; silent unless ``enabled`` and process 0."""
    import jax

    if not enabled or jax.process_index() != 0:
        silent = _Silent()
        silent.n = initial
        return silent
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)
