"""The `zephyr-local chat` app (Textual)."""
