"""DMARC (RFC 7489, with ``np`` and ``t`` from DMARCbis): policy discovery, alignment of the
header From with SPF and DKIM, enforcement with local overrides, and an evaluation record per
message for the aggregate reports.

Enable with ``conf.d/90-dmarc.toml``; see ``docs/plugins/dmarc.md``.
"""

from mailgate.plugins.dmarc.domains import aligned, organizational_domain
from mailgate.plugins.dmarc.evaluation import Evaluation, OverrideReason, PolicyPublished
from mailgate.plugins.dmarc.plugin import EVALUATION_NOTE, RESULT_KEY, Dmarc, DmarcSettings
from mailgate.plugins.dmarc.record import DmarcRecord, RecordError, parse_record

__all__ = [
    "EVALUATION_NOTE",
    "RESULT_KEY",
    "Dmarc",
    "DmarcRecord",
    "DmarcSettings",
    "Evaluation",
    "OverrideReason",
    "PolicyPublished",
    "RecordError",
    "aligned",
    "organizational_domain",
    "parse_record",
]
