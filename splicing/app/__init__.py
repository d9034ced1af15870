"""
What an operator touches, flowing one way: the command line (L{cli}) and the config file
(L{config}) describe relays (L{spec}: plain immutable values); L{build} makes a relay's service
from its description; L{service} runs and reloads them; L{workers} (the master) and L{worker}
(each process, L{workersockets}) run them in several processes; L{metrics} are given to the
relays, which never import them.  Nothing below imports from here.
"""
