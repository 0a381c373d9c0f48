"""The moderators' Streamlit dashboard: `streamlit run hitl_dashboard/app.py`.

It talks to the review API only (`api_client.py`), with the moderator's key from the sign-in
page; never to the database.
"""
