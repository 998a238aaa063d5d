"""The SMTP ingress: `mailgate.smtp.listener.SmtpListener` translates SMTP into calls on the
session's flow (`mailgate.flow`).

`mailgate.smtp.settings.SmtpListenerSettings` is what a ``[[listener]]`` table with
``type = "smtp"`` configures; `replies`, `trace`, `commands` and `data` hold the SMTP vocabulary
the flow and `mailgate try` share.
"""
