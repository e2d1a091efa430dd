"""Running nodes: one node in this process, a whole topology as processes, seeding, secrets, topology files."""
