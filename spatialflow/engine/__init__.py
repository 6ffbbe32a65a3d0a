"""Training loop and inference drivers."""
