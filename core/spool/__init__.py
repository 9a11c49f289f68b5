"""The durable spool: every message is fsynced here before it is acknowledged.

queue.py is the spool itself (write, claim, quarantine); check.py recovers it
after a crash or reboot; group_commit.py batches fsyncs across sessions;
notify.py tells the pipeline process about new files; recycle.py and
durability.py are its file helpers; disk_space.py keeps the disk from filling.
"""

# Plugins written before the floor plan (issue 12) imported these from
# ``mailpipe.spool`` when it was one module; they keep working. New code
# imports SpooledMessage from mailpipe.types.
from mailpipe.spool.queue import CHUNK_SIZE, Spool, SpooledMessage  # noqa: E402,F401
