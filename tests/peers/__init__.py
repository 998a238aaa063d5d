"""Real mail daemons (Postfix, smtp-sink, milters, DNS, ...) started on loopback for tests.

One module per daemon; each holds the class that runs the daemon and the pytest fixtures that
hand it to a test. ``tests/conftest.py`` exports every fixture defined in these modules.
"""
