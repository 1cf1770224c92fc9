"""Authentication (JWT), revocation and rate limiting."""
