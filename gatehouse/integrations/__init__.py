"""Clients for providers' APIs, each behind an interface."""
