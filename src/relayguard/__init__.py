"""relayguard: an outbound SMTP relay that keeps patient data from leaking by e-mail."""

__version__ = "0.1.0"
