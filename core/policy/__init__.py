"""The policy listener: mailgate as a Postfix SMTPD access policy server (``check_policy_service``).

Postfix asks at the SMTP stages where ``check_policy_service`` appears in its restriction lists
(connect to end of data); mailgate runs the plugin chain up to that stage and answers with an
access(5) action. No message content is seen. See ``docs/policy.md``.
"""

from mailgate.policy.listener import PolicyListener
from mailgate.policy.settings import PolicyListenerSettings

__all__ = ["PolicyListener", "PolicyListenerSettings"]
