"""The one error of the kernel backend."""


class KmountError(OSError):
    """A kernel mount or unmount could not be done; the message says why."""
