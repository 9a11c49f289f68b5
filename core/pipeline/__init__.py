"""The pipeline stage: spooled messages are enriched and stored in every sink (delivery.py)."""
