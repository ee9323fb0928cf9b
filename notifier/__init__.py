"""notifier: dossier status events in, citizen notifications out (email, SMS, Zalo, portal)."""

__version__ = "0.1.0"
