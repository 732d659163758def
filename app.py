"""Hugging Face Spaces entry point: build the app and launch it."""

from ctxdistill.ui.app import launch

if __name__ == "__main__":
    launch(host="0.0.0.0")
