"""The preview as a named Gradio API endpoint, called with gradio_client."""

from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def test_preview_endpoint(app_url):
    from gradio_client import Client

    client = Client(app_url, verbose=False)
    constitution = Path("assets/constitutions/pirate.yaml").read_text()
    result = client.predict(constitution, "How do I boil an egg?", 1, 0, 16, 0.0, api_name="/preview")
    assert set(result) == {"prompted", "unprompted", "mean_kl"}
    assert result["prompted"] != result["unprompted"] and result["mean_kl"] > 0
    with pytest.raises(Exception, match="empty"):
        client.predict(constitution, "  ", 1, 0, 16, 0.0, api_name="/preview")
