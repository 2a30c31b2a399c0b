"""A fake camera for the browser tests: a Y4M video of an image (a printed pass held up to the
camera), which Chromium plays as its camera with `--use-file-for-fake-video-capture`."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

__all__ = ["write_y4m", "camera_flags"]


def write_y4m(image_path: Path, out: Path, size: tuple[int, int] = (1920, 1080), frames: int = 3, fps: int = 5) -> Path:
    """`out`: a YUV 4:2:0 Y4M video of `frames` identical frames of `size`, the image scaled to fit,
    centred on white (a page on a desk). Chromium loops the file for as long as the page films."""
    width, height = size
    page = Image.open(image_path).convert("RGB")
    page.thumbnail(size, Image.Resampling.LANCZOS)
    frame = Image.new("RGB", size, (255, 255, 255))
    frame.paste(page, ((width - page.width) // 2, (height - page.height) // 2))
    y, cb, cr = frame.convert("YCbCr").split()  # JPEG's full-range YCbCr: the header says C420jpeg
    half = (width // 2, height // 2)
    planes = (
        y.tobytes() + cb.resize(half, Image.Resampling.BOX).tobytes() + cr.resize(half, Image.Resampling.BOX).tobytes()
    )
    with out.open("wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            f.write(b"FRAME\n" + planes)
    return out


def camera_flags(video: Path) -> list[str]:
    """Chromium's switches for a camera that films `video`, allowed without asking."""
    return [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={video}",
    ]
