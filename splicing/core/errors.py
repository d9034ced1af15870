"""
The one exception the splice layer raises.

It is an C{OSError} with C{errno} set, so code written against OpenBSD's
C{setsockopt(SO_SPLICE)} can test the same numbers (EBUSY, EINVAL, ENOTCONN,
EOPNOTSUPP, EPROTONOSUPPORT, ENOTSOCK, EBADF, EPROTO).
"""

import os


class SpliceError(OSError):
    """A splice request was refused; C{.errno} says why."""

    def __init__(self, errno, detail=None):
        message = os.strerror(errno)
        if detail:
            message = "%s: %s" % (message, detail)
        super().__init__(errno, message)
