"""The HTTP edge (``notifier api``): the API (``api``), its hardening middleware
(``security``) and the operators' console (``console``)."""
