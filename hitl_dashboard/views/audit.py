"""The Audit page (`hitl_dashboard/audit_page.py`)."""

from hitl_dashboard.audit_page import render

render()
