"""mijax's exception types, at the bottom of the package so that every layer can raise and catch them.

:class:`MijaxError` is input or a file that mijax cannot use; the command line prints its one-line message
and exits with status 2. Narrower types derive from it where they are raised (e.g.
:class:`mijax.collect.NotFinite`). A write the operating system refuses is :class:`mijax.store.WriteFailed`,
next to the writes that raise it.
"""


class MijaxError(ValueError):
    """Input or a file that mijax cannot use; the message is one line for the user."""


__all__ = ["MijaxError"]
