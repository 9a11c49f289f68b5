"""Message parsing: MIME (mime.py), journal reports (journal.py), NDRs (ndr.py), addresses."""
