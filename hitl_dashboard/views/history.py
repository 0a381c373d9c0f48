"""The History page (`hitl_dashboard/history_page.py`)."""

from hitl_dashboard.history_page import render

render()
