"""Headless Chromium's flags (the pages it renders are tested with the report, tests/test_publish.py)."""

from osmf_lib import browser


def test_the_sandbox_is_dropped_only_for_root_which_it_refuses_to_run_as():
    assert "--no-sandbox" in browser.arguments(0)
    assert "--no-sandbox" not in browser.arguments(1000) and "--headless=new" in browser.arguments(1000)
