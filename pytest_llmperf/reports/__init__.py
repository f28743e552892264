"""Reports: the end-of-session terminal tables, the JSON and Markdown reports, and the compare command."""
