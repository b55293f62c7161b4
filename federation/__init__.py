"""Federation: pinned peers, signed requests, and signed data-sharing agreements."""
