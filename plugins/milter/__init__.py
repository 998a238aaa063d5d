"""The milter bridge: external milters (protocol 2 and 6) as plugins of the pipeline.

Enable one milter per ``conf.d`` file (``plugin = "milter"``), or several in one file
(``milters = [...]``); see ``docs/plugins/milter.md``.
"""

from mailgate.milter.translate import reply_verdict
from mailgate.plugins.milter.bridged import BridgedMilter
from mailgate.plugins.milter.client import Answer, MilterClient, MilterFailure, MilterGone
from mailgate.plugins.milter.plugin import MilterPlugin
from mailgate.plugins.milter.settings import MilterEntry, MilterSettings

__all__ = [
    "Answer",
    "BridgedMilter",
    "MilterClient",
    "MilterEntry",
    "MilterFailure",
    "MilterGone",
    "MilterPlugin",
    "MilterSettings",
    "reply_verdict",
]
