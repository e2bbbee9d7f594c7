"""Entry file of the Streamlit app: page setup, the shared sidebar and the page router.

Start it with ``python -m app.launch`` (or ``make run``) so that streamlit_config.toml is in force.
"""

import sys
import time
from pathlib import Path

# `streamlit run app/main.py` puts app/ on sys.path, not the repository root that `app.*` lives in
# (so app.paths.ROOT cannot be imported yet).
_repository = str(Path(__file__).resolve().parent.parent)
if _repository not in sys.path:
    sys.path.insert(0, _repository)

import streamlit as st  # noqa: E402 (after the sys.path line above)

from app import sidebar, state, ui  # noqa: E402

started = time.perf_counter()
st.set_page_config(page_title="DRNet explorer", page_icon=":material/alt_route:", layout="wide")
state.init()
page = st.navigation(
    [
        st.Page("views/inspect.py", title="Inspect an image", icon=":material/image_search:", default=True),
        st.Page("views/compare.py", title="Compare two images", icon=":material/compare:"),
        st.Page("views/attributions.py", title="Attributions", icon=":material/visibility:"),
        st.Page("views/explorer.py", title="Data-set explorer", icon=":material/query_stats:"),
        st.Page("views/teaching.py", title="How a DRNet works", icon=":material/school:"),
    ]
)
with ui.one_run_at_a_time():
    sidebar.render()
    page.run()
# What the server spent on this run, for operators and bench/classroom.py (the browser's share is not in it).
ui.log.info("page %r ran in %.0f ms", page.title, (time.perf_counter() - started) * 1e3)
ui.draw_held_charts()
