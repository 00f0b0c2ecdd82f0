"""What an image URI may name and what reading one may cost."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from osmf_lib import images
from osmf_lib.config import load_config
from osmf_lib.images import ImageError, ImageLimits, read_image

LIMITS = ImageLimits(max_bytes=2**20, max_pixels=10_000)


def _png(path: Path, size: tuple[int, int] = (8, 8)) -> str:
    Image.new("RGB", size, (200, 10, 10)).save(path)
    return str(path)


def test_the_default_roots_are_the_landings_images_and_the_render_artifacts(tmp_path):
    cfg = load_config(
        overrides=[f"lakehouse.landing={tmp_path}/landing", "render.artifacts=s3a://bucket/creatives"], base_file=None
    )
    roots = images.roots(cfg)
    assert roots == (f"{tmp_path}/landing/images/", "s3://bucket/creatives/")
    assert images.refusal(f"{tmp_path}/landing/images/products/p1.png", roots) is None
    assert images.refusal(f"file://{tmp_path}/landing/images/p1.png", roots) is None
    assert images.refusal("s3://bucket/creatives/2026-11-03/p1/0/0.png", roots) is None
    assert images.refusal("s3a://bucket/creatives/x.png", roots) is None  # Spark's name for the same bucket


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("/etc/passwd", "outside images.roots"),
        ("/srv/landing/images-old/p1.png", "outside images.roots"),  # a prefix, not a folder, of a root
        ("images/products/p1.png", "outside images.roots"),  # relative: to wherever a job runs
        ("/srv/landing/images/../../etc/passwd", "a '.' or '..' segment"),
        ("http://169.254.169.254/latest/meta-data", "scheme http://"),
        ("https://cdn.example.com/p1.png", "scheme https://"),
        ("s3://other-bucket/p1.png", "outside images.roots"),
        ("/srv/landing/images/p1\n.png", "a control character"),
    ],
)
def test_a_uri_outside_the_roots_or_of_another_scheme_is_refused(uri, why):
    assert images.refusal(uri, ("/srv/landing/images/", "s3://bucket/creatives/")).startswith(why)


def test_a_root_that_is_no_store_is_a_config_error():
    with pytest.raises(ValueError, match="images.roots entry 'http://cdn/' is not a place images can come from"):
        load_config(overrides=["images.roots=['http://cdn/']"], base_file=None)


def test_an_image_within_the_limits_reads_whole(tmp_path):
    image = read_image(_png(tmp_path / "a.png"), LIMITS)
    assert image.size == (8, 8) and image.getpixel((0, 0)) == (200, 10, 10)


def test_a_file_that_never_ends_stops_at_the_byte_cap():
    with pytest.raises(ImageError, match="larger than images.max_bytes=1,048,576"):
        read_image("/dev/zero", LIMITS)


def test_a_small_file_that_decodes_to_many_pixels_stops_at_the_pixel_cap(tmp_path):
    path = _png(tmp_path / "bomb.png", (4000, 4000))  # 16 M pixels in a few KB
    assert Path(path).stat().st_size < 100_000
    with pytest.raises(ImageError, match="4000x4000 is more than images.max_pixels=10,000"):
        read_image(path, LIMITS)


def test_pillows_own_bomb_check_and_a_truncated_file_are_unreadable_images(tmp_path, monkeypatch):
    path = _png(tmp_path / "a.png", (64, 64))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 64 x 64 is more than twice that
    with pytest.raises(ImageError, match="decompression bomb"):
        read_image(path, ImageLimits(2**20, 10**9))
    monkeypatch.undo()
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 50).save(buffer, format="PNG")
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageError, match="truncated"):
        read_image(str(tmp_path / "cut.png"), LIMITS)


def test_a_reader_refuses_other_schemes_and_dot_dot_even_without_roots(tmp_path):
    with pytest.raises(ImageError, match="refused: scheme http://"):
        read_image("http://169.254.169.254/latest", LIMITS)
    with pytest.raises(ImageError, match="refused: a '.' or '..' segment"):
        read_image(f"{tmp_path}/../etc/passwd", LIMITS)
