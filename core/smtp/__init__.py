"""The SMTP ingress: `SmtpListener` translates SMTP into pipeline stages and egress calls.

`SmtpListenerSettings` is what a ``[[listener]]`` table with ``type = "smtp"`` configures.
"""

from mailgate.smtp.listener import SmtpListener
from mailgate.smtp.settings import SmtpListenerSettings

__all__ = ["SmtpListener", "SmtpListenerSettings"]
