"""RQ job functions: apply one stored event to members, then refresh their access cache."""
