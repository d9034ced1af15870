"""
The twistd/twist dropin: C{twistd splice ...} runs L{splicing.app.cli}
(its C{Options} and C{makeService}).
"""

from twisted.application.service import ServiceMaker

splice = ServiceMaker(
    "splicing",
    "splicing.app.cli",
    "OpenBSD-style spliced TCP, UDP and HTTP relays (see 'twistd splice --help').",
    "splice",
)
