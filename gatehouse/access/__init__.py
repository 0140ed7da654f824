"""Access: rules (pure evaluation), member state, the versioned cache, explain."""
