"""Monitoring: scheduled job definitions (config/jobs.toml), their runner, the scheduler process and CLI."""
