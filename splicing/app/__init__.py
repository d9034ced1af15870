"""
What an operator touches: the command line (L{cli}), the config file (L{config}), the services
(L{service}), metrics, prefork workers and the demo origin. Nothing below imports from here.
"""
