"""Page scripts for `st.navigation`: each runs its page module's `render()`."""
