"""Importing weights from other implementations (Hugging Face checkpoints for now)."""
