"""`GET /metrics`: the appliance in Prometheus' text format, read from shared state at scrape time."""
