"""Replication: change-log endpoints, roles and promotion, and the follower a mirror runs."""
