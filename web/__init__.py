"""The captions page (static files) and its development server, `python -m web.serve`."""
