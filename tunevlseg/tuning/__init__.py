"""tunevlseg."""
