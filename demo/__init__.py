"""The clinicians' Gradio page: ``python -m demo`` (``make demo``); see ``demo/__main__.py``.

Importing this package switches Gradio's usage analytics off before Gradio itself is imported:
the page must make no outside request (offline machines, patient images)."""

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
