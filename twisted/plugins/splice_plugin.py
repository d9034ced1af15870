"""
The twistd/twist dropin: C{twistd splice ...} runs L{splicing.cli}.
"""

from twisted.application.service import ServiceMaker

splice = ServiceMaker(
    "splicing",
    "splicing.cli",
    "OpenBSD-style spliced TCP and UDP relays (see 'twistd splice --help', docs/usage.md).",
    "splice",
)
