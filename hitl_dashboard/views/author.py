"""The Author page (`hitl_dashboard/author_page.py`)."""

from hitl_dashboard.author_page import render

render()
