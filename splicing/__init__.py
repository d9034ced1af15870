"""
splicing: OpenBSD-style socket splicing for Twisted.

Usage::

    from splicing import splice, SpliceError, Reason
    s = splice(source_transport, drain_transport, max=None, idle=None)
    s.done.addCallback(lambda r: print(r.length, r.reason, r.error))
"""

from splicing.core.base import Last
from splicing.core.errors import SpliceError
from splicing.core.result import Reason, SpliceResult
from splicing.core.splice import splice

__version__ = "0.1.0"
__all__ = ["splice", "Last", "SpliceError", "Reason", "SpliceResult"]
