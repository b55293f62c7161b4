"""The hub's web dashboard: identity and health, sensors, peers, agreements, recent
cross-border queries, a regional chart and a map. Read-only; behind the admin credential
unless the hub was started with --dashboard-read-only."""
