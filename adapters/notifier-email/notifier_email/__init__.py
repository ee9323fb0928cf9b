"""notifier-email: the email channel adapter for notifier (SMTP, pooled sessions).

Installed, it registers :class:`EmailAdapter` as ``email`` in the ``notifier.adapters``
entry-point group; configure it with ``NOTIFIER_ADAPTERS__EMAIL__*`` (see
:class:`EmailSettings`).
"""

from .adapter import EmailAdapter, classify_smtp_error
from .settings import EmailSettings

__all__ = ["EmailAdapter", "EmailSettings", "classify_smtp_error"]
