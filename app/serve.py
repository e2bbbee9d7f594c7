"""The server process ``app.launch`` execs: warm the caches, then run Streamlit's command line here.

``python -m app.serve run app/main.py --flags...`` takes the arguments of ``streamlit``. Warming
first (``app.warm``) means the health check answers only when the first page is cheap, and running
Streamlit in this process means the pages read the caches the warm-up filled.
"""

from __future__ import annotations

from streamlit.web.cli import main as streamlit_main

from app.warm import warm

if __name__ == "__main__":
    warm()
    streamlit_main(prog_name="streamlit")
