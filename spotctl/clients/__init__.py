"""One API client per provider: the only modules that speak a provider HTTP API (see http.py)."""
