"""Video clips: frames and a frame rate, MP4 (H.264 through PyAV) bytes to clips and back,
under one bound on frames x pixels.

The Video codec (`engine.codecs`), the CLI and the ai-runner routes decode and encode clips
here, as images go through `engine.values`, so the same limits hold everywhere. PyAV is
imported only when a clip is decoded or encoded.
"""

import io
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from capgraph.engine.errors import InputError

MAX_FRAMES = 600
"""Most frames a clip may hold (40 s at 15 fps; Stable Video Diffusion makes 14 to 25)."""
MAX_VIDEO_PIXELS = 25 * 1024 * 1024 * 4
"""Most pixels a clip may hold over all its frames: 100 frames of 1024 x 1024 (300 MB decoded)."""
MAX_VIDEO_BYTES = 64 << 20
"""Largest encoded clip: H.264 at the pixel limit is far smaller (the request body limit is the same)."""
MAX_FPS = 120.0
VIDEO_MIME = ("video/mp4", "video/quicktime", "video/webm", "video/x-matroska")
"""Media types a `data:` URL for a video may say."""
MP4_MIME = "video/mp4"


@dataclass(frozen=True, eq=False)
class Video:
    """A clip: `frames` uint8 (T, H, W, 3), every frame the same size, played at `fps`."""

    frames: np.ndarray
    fps: float

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of its frames."""
        return int(self.frames.shape[2]), int(self.frames.shape[1])

    @classmethod
    def of(cls, frames: Any, fps: float) -> "Video":
        """A clip from a list of (H, W, 3) uint8 frames of one size (or a stacked array)."""
        return cls(np.ascontiguousarray(np.stack(list(frames)) if not isinstance(frames, np.ndarray) else frames), fps)


def check_video(value: Any) -> str | None:
    """What is wrong with a value for a Video port, or None."""
    if not isinstance(value, Video):
        return "expected a Video (frames and fps)"
    frames = value.frames
    if not (isinstance(frames, np.ndarray) and frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[3] == 3):
        return f"expected uint8 frames (T, H, W, 3), got {getattr(frames, 'dtype', type(frames).__name__)} array"
    if len(value) == 0:
        return "a video needs at least one frame"
    if not 0 < value.fps <= MAX_FPS:
        return f"fps must be above 0 and at most {MAX_FPS:g}, got {value.fps:g}"
    return None


def check_bounds(frames: int, width: int, height: int, field: str, max_pixels: int) -> None:
    """A clip of `frames` frames of width x height: 413 naming `field` when it is too long or too large."""
    if width * height > max_pixels:
        raise InputError(field, f"video frames are {width}x{height} pixels, over the limit of {max_pixels:,}", 413)
    if frames > MAX_FRAMES:
        raise InputError(field, f"video of {frames:,} frames is over the limit of {MAX_FRAMES} frames", 413)
    if frames * width * height > MAX_VIDEO_PIXELS:
        raise InputError(
            field,
            f"video of {frames} frames of {width}x{height} holds {frames * width * height:,} pixels, "
            f"over the limit of {MAX_VIDEO_PIXELS:,} (frames x pixels)",
            413,
        )


CONTAINERS = {b"ftyp": "mov,mp4,m4a,3gp,3g2,mj2", b"\x1aE\xdf\xa3": "matroska,webm"}
"""The containers a clip may come in, by their magic bytes (an MP4/MOV `ftyp` box at offset 4,
an EBML header at 0), and the demuxer each is opened with: untrusted bytes never reach the
demuxers that can open other resources (playlists, concat lists)."""


def _container(data: bytes, field: str) -> str:
    if data[4:8] == b"ftyp":
        return CONTAINERS[b"ftyp"]
    if data[:4] == b"\x1aE\xdf\xa3":
        return CONTAINERS[b"\x1aE\xdf\xa3"]
    raise InputError(field, "not a video: send an MP4, MOV, WebM or Matroska file", 400)


def decode_video(data: bytes, field: str = "video", max_pixels: int = 4096 * 4096) -> Video:
    """MP4, MOV, WebM or Matroska bytes -> a Video, refusing clips over the bounds as soon as
    the header or the frames decoded so far pass them (413), and data that is not a video,
    has no decoder here, changes size mid-clip or is cut short (400). The header's frame count
    is an upper bound only: an edit list may hide frames before time 0."""
    import av

    if not data:
        raise InputError(field, "empty video data")
    fmt = _container(data, field)
    try:
        with av.open(io.BytesIO(data), mode="r", format=fmt) as container:
            if not container.streams.video:
                raise InputError(field, "not a video: the file has no video stream", 400)
            stream = container.streams.video[0]
            if stream.codec_context is None:  # PyAV's FFmpeg has no decoder for this track
                raise InputError(field, "the video's codec cannot be decoded here; send H.264, VP9 or AV1", 400)
            width, height = stream.codec_context.width, stream.codec_context.height
            check_bounds(stream.frames or 0, width, height, field, max_pixels)
            rate = stream.average_rate or stream.base_rate or stream.guessed_rate
            fps = float(rate) if rate else 0.0
            frames: list[np.ndarray] = []
            for frame in container.decode(stream):
                if frames and (frame.height, frame.width) != frames[0].shape[:2]:
                    raise InputError(field, "video frames change size mid-clip; send a clip of one frame size", 400)
                check_bounds(len(frames) + 1, frame.width, frame.height, field, max_pixels)  # one size: a true total
                frames.append(frame.to_ndarray(format="rgb24"))
    except InputError:
        raise
    except (av.error.FFmpegError, ValueError, OSError, IndexError, AttributeError, TypeError) as exc:
        raise InputError(field, f"not a decodable video ({type(exc).__name__}: {str(exc)[:80]})", 400) from None
    if not frames:
        raise InputError(field, "not a decodable video: no frame could be decoded (truncated?)", 400)
    if not 0 < fps <= MAX_FPS:
        raise InputError(field, f"video frame rate {fps:g} is not between 0 and {MAX_FPS:g} fps", 400)
    return Video(np.stack(frames), fps)


def encode_video(video: Video, crf: int = 18) -> bytes:
    """A Video -> MP4 bytes (H.264, yuv420p, moov first so browsers play it as it loads).

    yuv420p needs even sides: an odd side is padded by repeating its last row or column."""
    frames = video.frames
    pad = ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0))
    if any(p[1] for p in pad):
        frames = np.pad(frames, pad, mode="edge")
    with tempfile.TemporaryDirectory(prefix="capgraph-mp4-") as folder:  # faststart rewrites the file: not in memory
        path = Path(folder) / "clip.mp4"
        _write_mp4(path, frames, video.fps, crf)
        return path.read_bytes()


def _write_mp4(path: Path, frames: np.ndarray, fps: float, crf: int) -> None:
    import av

    with av.open(str(path), mode="w", format="mp4", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=fps_fraction(fps))
        stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def fps_fraction(fps: float) -> Fraction:
    """A frame rate as the exact fraction a container stores (30000/1001 for 29.97)."""
    return Fraction(fps).limit_denominator(1001)


def is_mp4(data: bytes) -> bool:
    return data[4:8] == b"ftyp"
