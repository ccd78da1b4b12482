"""The running processes: consumer runners, the query worker, the broker, the CLI."""
