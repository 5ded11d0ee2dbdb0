"""Network plumbing: the polite, bounded HTTP client shared by the stages."""
