"""Replication: change-log endpoints, roles and promotion, mirrors' acknowledgements, a mirror's follower."""
