"""What every tab shares: the workspace store, who the visitor is, the loaded model, and the
constitution currently being edited. Tabs call the library through these and stay thin."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from ctxdistill import constitution as cmod
from ctxdistill.store import Store, workspace_home

# Model-heavy events share one queue slot: two visitors never load or run two models at once.
MODEL_QUEUE = "model"


@dataclass
class AppContext:
    home: Path
    model_spec: str | None = None
    demo: bool = False
    store: Store = field(init=False)
    # set by app.build_app before the tabs are built
    draft: gr.State | None = None  # the constitution being edited, as a dict
    version: gr.State | None = None  # id of the saved version the draft started from

    def __post_init__(self):
        self.store = Store(self.home)

    @classmethod
    def from_env(cls, home=None) -> "AppContext":
        return cls(home=workspace_home(home), model_spec=os.environ.get("CTXDISTILL_MODEL") or None,
                   demo=bool(os.environ.get("SPACE_ID")))

    def owner(self, request: gr.Request | None) -> str:
        """The shared local workspace is owner "": demo visitors each get their own."""
        if self.demo and request is not None:
            return request.session_hash or ""
        return ""

    def model(self):
        from ctxdistill.models import default_models_dir, get_model

        return get_model(self.model_spec, models_dir=default_models_dir(self.home))


def draft_constitution(draft: dict | None) -> cmod.Constitution:
    """The editor's dict as a Constitution (not validated: drafts may be incomplete)."""
    return cmod.from_dict(draft or {"name": "untitled", "principles": []})


def error_text(exc: Exception) -> str:
    return f"**Error:** {exc}"
