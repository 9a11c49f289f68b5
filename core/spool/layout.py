"""The spool's on-disk layout: its directories and the keys it writes into
a message's metadata. Shared by the spool, its crash recovery and its readers."""

#: Subdirectories of the spool: waiting messages, refused ones, files being
#: written, and recycled files ready for reuse.
QUEUE, QUARANTINE, TMP, FREE = "queue", "quarantine", "tmp", "free"

#: The metadata key of a commit mark: the kernel boot id it was written under
#: (mailpipe.spool.check).
BOOT_KEY = "_spool_boot"
