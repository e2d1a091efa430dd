"""The bulk-registration client: files read into batches, batches sent to ``POST /api/batch``."""
