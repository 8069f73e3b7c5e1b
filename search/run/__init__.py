"""The Tune runtime: the driver, one trial, the scheduler and searcher, Ray for a search, latency, the summary."""
