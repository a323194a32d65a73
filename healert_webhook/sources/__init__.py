"""Sources of audit events: the apiserver webhook, the log file tail, and replay."""
