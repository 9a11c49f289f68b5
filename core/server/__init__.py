"""``mailpipe serve``: the master process and the programs it starts (as Postfix's master).

master.py runs the server (SMTP listener, collectors, HTTP console, pipeline);
children.py supervises child processes: the pipeline process
(pipeline_process.py) and the SMTP worker processes (smtp_workers.py).
sd_notify.py tells systemd when the server is ready.
"""
