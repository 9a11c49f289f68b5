"""The shared SMTP listener (``mailpipe.intake.smtp``): see listener.py and docs/smtp.md."""
