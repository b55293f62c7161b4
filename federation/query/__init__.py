"""Federated queries: the entry hub fans out and relays (fanout), each providing hub decides
under its own agreement and seals its partial to the asker (provider), and the asker opens,
verifies and merges (asker)."""
