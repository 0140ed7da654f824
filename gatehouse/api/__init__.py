"""The HTTP API read by the membership site (reader) and used by admins (admin)."""
