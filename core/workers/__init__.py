"""Workers: ``mailgate serve`` as N processes sharing the listeners' sockets, one master.

``[mailgate] workers`` (0, the default: one per core) above 1 makes ``serve`` a `Master` that
binds the sockets and supervises N workers, each a whole `mailgate.app.App`. See
docs/scaling.md for what is shared, what runs once per node, and the figures measured.
"""

from mailgate.workers.master import Master, StartError

__all__ = ["Master", "StartError"]
