"""Measuring the monitor: `qta-monitor eval` in process and through Kafka, replay, reports, the
datasets' adapters, the operating point and offline scoring. Serving never imports it."""
