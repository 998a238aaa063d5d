"""``greylist``: greylisting by (client network, sender, recipient), as Postgrey does it.

See `mailgate.plugins.greylist.plugin` and docs/plugins/greylist.md.
"""

from mailgate.plugins.greylist.plugin import Greylist
from mailgate.plugins.greylist.settings import GreylistSettings
from mailgate.plugins.greylist.state import GreylistState, Outcome, StoreState
from mailgate.plugins.greylist.triplet import Decision, Timing, Triplet, TripletState, decide

__all__ = [
    "Decision",
    "Greylist",
    "GreylistSettings",
    "GreylistState",
    "Outcome",
    "StoreState",
    "Timing",
    "Triplet",
    "TripletState",
    "decide",
]
