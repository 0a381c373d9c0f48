"""The Metrics page (`hitl_dashboard/metrics_page.py`)."""

from hitl_dashboard.metrics_page import render

render()
