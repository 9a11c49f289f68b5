"""The shared SMTP listener (``mailpipe.smtp``): see listener.py and docs/smtp.md."""
