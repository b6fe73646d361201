"""Decoding an uploaded image: the refusal of a decompression bomb quotes the service's own limit."""

import io

import pytest
from PIL import Image

from rmnet.service.uploads import RequestError, decode_image


def test_a_decompression_bomb_is_refused_with_the_services_pixel_limit():
    out = io.BytesIO()
    Image.new("1", (20000, 20000)).save(out, "PNG")  # 400 million pixels in a few KB
    with pytest.raises(RequestError) as refused:
        decode_image(out.getvalue(), max_pixels=12_345_678)
    assert refused.value.status == 422
    detail = refused.value.detail
    assert "400,000,000 pixels" in detail and "limit of 12,345,678 pixels" in detail
    assert str(Image.MAX_IMAGE_PIXELS) not in detail and f"{Image.MAX_IMAGE_PIXELS:,}" not in detail
