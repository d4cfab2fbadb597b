"""The machine stage: what this machine can run: the execution plan and child processes."""
