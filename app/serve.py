"""The server process ``app.launch`` execs: warm the caches in the background, then run Streamlit here.

``python -m app.serve run app/main.py --flags...`` takes the arguments of ``streamlit``; running
Streamlit's command line in this process lets ``app.warm`` fill the same caches the pages read.
"""

from __future__ import annotations

from streamlit.web.cli import main as streamlit_main

from app.warm import warm_in_background

if __name__ == "__main__":
    warm_in_background()
    streamlit_main(prog_name="streamlit")
