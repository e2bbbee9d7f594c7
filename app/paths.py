"""Where the app's files live: the repository root, the shipped assets and the server settings."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
SERVER_CONFIG = ROOT / "streamlit_config.toml"  # the one source of the server's settings (upload limit included)
MAIN = ROOT / "app" / "main.py"
