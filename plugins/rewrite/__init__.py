"""Address rewriting: envelope sender and recipients, subaddresses, catch-all.

Enable with ``conf.d/70-rewrite.toml``; see ``docs/plugins/rewrite.md``.
"""

from mailgate.plugins.rewrite.lookup import AddressMap, CatchAll, Lookup, rewrite, with_orcpt
from mailgate.plugins.rewrite.plugin import HeaderRewrite, Rewrite, Rewriter
from mailgate.plugins.rewrite.settings import RewriteSettings

__all__ = [
    "AddressMap",
    "CatchAll",
    "HeaderRewrite",
    "Lookup",
    "Rewrite",
    "RewriteSettings",
    "Rewriter",
    "rewrite",
    "with_orcpt",
]
