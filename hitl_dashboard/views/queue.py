"""The Queue page (`hitl_dashboard/queue_page.py`)."""

from hitl_dashboard.queue_page import render

render()
