"""The report's parts that need no night: the chart and what an unreadable image does."""

from __future__ import annotations

import datetime as dt
from xml.etree import ElementTree

import pandas as pd
import pytest
from PIL import Image

from osmf_lib.config import Config
from osmf_lib.images import ImageLimits
from osmf_lib.job import StageError
from osmf_lib.publish.report import _metrics_table, _stage_summaries, _thumbnail, line_chart

LIMITS = ImageLimits.of(Config())


def test_the_ctr_chart_is_valid_svg_with_a_line_per_series_that_has_data():
    days = [dt.date(2026, 11, d) for d in (1, 2, 3)]
    svg = line_chart(
        {
            "all impressions": pd.Series([0.05, 0.06, 0.055], index=days),
            "generated creatives": pd.Series([None, None, 0.07], index=days),
            "nothing yet": pd.Series([None, None, None], index=days),
        }
    )
    lines = ElementTree.fromstring(svg).findall("{http://www.w3.org/2000/svg}polyline")
    assert [len(line.get("points").split()) for line in lines] == [3, 1]
    assert "2026-11-01" in svg and "2026-11-03" in svg and "nothing yet" not in svg
    assert "no impressions yet" in line_chart({"all impressions": pd.Series(dtype=float)})


def test_an_unreadable_image_fails_naming_it(tmp_path):
    broken = tmp_path / "0.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(StageError, match=f"cannot read image {broken}"):
        _thumbnail(str(broken), 64, LIMITS)
    # An image over the pixel cap is as unreadable as a broken one (the report embeds it).
    Image.new("1", (200, 200)).save(broken)
    with pytest.raises(StageError, match="200x200 is more than images.max_pixels=100"):
        _thumbnail(str(broken), 64, ImageLimits(2**20, 100))


def test_a_stage_summary_puts_slices_in_columns_and_leaves_per_category_slices_to_the_full_table():
    metrics = pd.DataFrame(
        {
            "stage": ["grouping", "grouping", "grouping", "publish"],
            "metric": ["ari", "ari", "ari", "generated_share"],
            "slice": ["product_aware", "product_agnostic", "product_aware/books", None],
            "value": [0.53, 0.16, 0.9, 1.0],
        }
    )
    summary = _stage_summaries(metrics)
    assert "<th>product_agnostic</th><th>product_aware</th>" in summary and "books" not in summary
    assert summary.index("<h3>grouping</h3>") < summary.index("<h3>publish</h3>")
    assert '<td>ari</td><td class="num">0.16</td><td class="num">0.53</td>' in summary
    assert "product_aware/books" in _metrics_table(metrics)
