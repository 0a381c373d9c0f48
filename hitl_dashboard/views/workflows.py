"""The Workflows page (`hitl_dashboard/workflows_page.py`)."""

from hitl_dashboard.workflows_page import render

render()
