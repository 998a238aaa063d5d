"""DMARC aggregate reports (RFC 7489 7.2): evaluations recorded in the store, one report per
domain and period built, gzipped and queued to the domain's ``rua`` addresses.

Enable with ``conf.d/95-reports.toml``; see ``docs/plugins/reports.md``.
"""

from mailgate.plugins.reports.plugin import Reports
from mailgate.plugins.reports.service import ReportingService, ReportOutcome
from mailgate.plugins.reports.settings import ReportsSettings

__all__ = ["ReportOutcome", "ReportingService", "Reports", "ReportsSettings"]
