"""Intake, the first stage: mail comes in and is spooled.

smtp/ is the shared SMTP listener for push connection types; pull types'
collectors run through the collector context (mailpipe.types.CollectContext)
built in collectors.py.
"""
