"""Agent implementations. They depend on ``runner.api`` only."""
