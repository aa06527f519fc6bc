"""Audio helpers: WAV packing and the client-side player."""
