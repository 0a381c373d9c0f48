"""The Sign in page (`hitl_dashboard/sign_in_page.py`)."""

from hitl_dashboard.sign_in_page import render

render()
