"""
The long reliability run (``python -m tests.stress``) and the helpers the
fast reliability tests share with it: checked traffic in separate processes
(L{traffic}), starting and measuring a relay (L{load}).
"""
