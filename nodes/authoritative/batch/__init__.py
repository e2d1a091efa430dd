"""``POST /api/batch``: bulk registration on an authoritative node, prepared in worker processes."""
