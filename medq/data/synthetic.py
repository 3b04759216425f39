"""Procedural fundus photographs: deterministic by seed, rendered directly at the target size.

Anatomy (positions in units of the image side S): a circular field of view on black, radius
0.47-0.5 S (``medq.data.fov.crop_to_fov`` frames a real photograph with its circle spanning the
frame), in about a third of the images cut at the top and bottom as EyePACS cameras cut it; the
macula near the centre (a darker, slightly brown spot); the optic disc 0.27-0.31 S nasal to it
(bright yellow-white with a paler cup); colours spanning DRIVE's range; a vessel tree growing out
of the disc: four arcades of artery/vein pairs, the temporal ones arcing above and below the
macula, branching with tapering widths (veins darker and wider than arteries); choroidal background
texture; illumination falling off towards the rim. Optional lesions follow a DR grade 0-4:
microaneurysms (grade >= 1), haemorrhages and hard exudates (>= 2), more of them (3), new vessels
at the disc (4). Lesion radii scale with S but never fall below ``LESION_MIN_RADIUS_PX``: at 64 px
a microaneurysm drawn to scale (0.003-0.006 S) is a fifth of a pixel and the grade could not be
read from the image at all.

Vessels are drawn as PIL polylines at 2x (4x below 128 px) and box-downsampled, which
anti-aliases the thin vessels that super-resolution has to recover.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

DR_PROBS = (0.45, 0.15, 0.15, 0.13, 0.12)
LESION_MIN_RADIUS_PX = 0.8
"""Smallest lesion radius in pixels: a dot of 1.6 px still shows, in colour, after the 2x
reduction of the sr2 input (at 256 px and above every lesion is drawn to scale)."""
GENERATOR_VERSION = 3
"""Bumped whenever an image of a given (seed, size) changes; part of the data cache key.
2: lesion radii floored at ``LESION_MIN_RADIUS_PX``.
3: real-photograph framing and colour range. The FOV radius was one fixed fraction of the frame,
while ``crop_to_fov`` frames a real one with its circle spanning the frame (often cut at top and
bottom), and the background colour covered only part of the DRIVE images' range. A base trained
on version 2 drew a dark rim and speckle inside the frame of every DRIVE photograph
(docs/HISTORY.md has the measurements)."""


@dataclass
class Fundus:
    image: np.ndarray
    """uint8 (S, S, 3)"""
    mask: np.ndarray
    """bool (S, S): the field of view"""
    dr_grade: int
    lesions: tuple[str, ...]
    """Lesion kinds drawn: microaneurysms, haemorrhages, hard exudates, new vessels."""


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(yy, xx, dist): pixel coordinates and distance from the centre in pixels, float32 (S, S);
    read-only."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = size / 2 - 0.5
    dist = np.hypot(xx - c, yy - c)
    for a in (yy, xx, dist):
        a.flags.writeable = False
    return yy, xx, dist


def _noise(rng: np.random.Generator, grid: int, size: int) -> np.ndarray:
    """Smooth noise in [-1, 1] of shape (size, size): a random grid upsampled bicubically."""
    g = rng.uniform(-1, 1, (grid, grid)).astype(np.float32)
    return np.asarray(Image.fromarray(g, mode="F").resize((size, size), Image.BICUBIC))


class _Canvas:
    """Two supersampled 8-bit layers (arteries, veins) plus lesion layers."""

    def __init__(self, size: int, ss: int):
        self.ss, self.size = ss, size
        self.layers = {
            k: Image.new("L", (size * ss, size * ss)) for k in ("artery", "vein", "red", "exudate")
        }
        self.draw = {k: ImageDraw.Draw(v) for k, v in self.layers.items()}
        self.used: set[str] = set()

    def polyline(self, layer: str, points: list, width: float) -> None:
        """One width for the whole run of points (callers split runs where the width changes)."""
        if len(points) < 2:
            return
        w = width * self.ss
        # Sub-pixel widths: a 1-pixel line of lower intensity has the right area after downsampling.
        fill = 255 if w >= 1.5 else int(255 * w / 1.5)
        wi = max(1, int(round(w)))
        pts = [(x * self.ss, y * self.ss) for x, y in points]
        self.draw[layer].line(pts, fill=fill, width=wi, joint="curve" if wi > 2 else None)
        self.used.add(layer)

    def dot(self, layer: str, p, radius: float, fill: int = 255) -> None:
        r = radius * self.ss
        x, y = p[0] * self.ss, p[1] * self.ss
        self.draw[layer].ellipse([x - r, y - r, x + r, y + r], fill=fill)
        self.used.add(layer)

    def get(self, layer: str) -> np.ndarray | None:
        if layer not in self.used:
            return None
        img = self.layers[layer].resize((self.size, self.size), Image.BOX)
        return np.asarray(img, dtype=np.float32) / 255.0


@dataclass(frozen=True)
class _Eye:
    """Where the parts of one image are, in pixels."""

    size: int
    centre: float
    radius: float
    """of the field of view"""
    cut: float
    """rows cut off at top and bottom (EyePACS-style frame); 0: none"""
    side: float
    """+1: disc to the right (right eye as photographed), -1: to the left"""
    macula: tuple[float, float]
    disc: tuple[float, float]
    disc_r: float


def _eye(rng: np.random.Generator, size: int) -> _Eye:
    """The anatomy's positions: the first draws of an image's random stream."""
    S = size
    c = S / 2 - 0.5
    R = rng.uniform(0.47, 0.5) * S
    # EyePACS-style frame: the sensor cuts the FOV circle at top and bottom.
    cut = rng.uniform(0.0, 0.1) * S if rng.random() < 0.35 else 0.0
    side = rng.choice((-1.0, 1.0))
    mac = (c - side * rng.uniform(0.06, 0.10) * S, c + rng.uniform(-0.03, 0.03) * S)
    disc = (mac[0] + side * rng.uniform(0.27, 0.31) * S, mac[1] - rng.uniform(0.0, 0.04) * S)
    disc_r = rng.uniform(0.070, 0.082) * S
    return _Eye(S, c, R, cut, side, mac, disc, disc_r)


@dataclass
class _Painter:
    """Draws vessels and lesions of one ``eye`` onto ``canvas`` with the image's random stream."""

    canvas: _Canvas
    rng: np.random.Generator
    eye: _Eye

    def grow(self, layer: str, pos, heading: float, width: float, curve: float, depth: int,
             wiggle: float = 0.025) -> None:
        """Walk a vessel from ``pos``: taper, bend by ``curve`` per step, branch, stop at the
        rim."""
        canvas, rng, size, macula = self.canvas, self.rng, self.eye.size, self.eye.macula
        step = 0.014 * size
        x, y = pos
        min_w = 0.003 * size
        next_branch = rng.integers(5, 12)
        n = 0
        run, run_w = [(x, y)], width  # points drawn with one width, flushed when it changes
        # Drawn in one call: per-step Generator calls dominate the cost of the walk otherwise.
        jitter = rng.normal(0, wiggle, 400).tolist()
        while width > min_w and n < len(jitter):
            heading += curve + jitter[n]
            curve *= 0.985 if depth == 0 else 0.96
            nx, ny = x + step * math.cos(heading), y + step * math.sin(heading)
            if math.hypot(nx - self.eye.centre, ny - self.eye.centre) > self.eye.radius * 1.02:
                break
            # Vessels skirt the fovea: push the heading away when closer than ~0.08 S.
            dm = math.hypot(nx - macula[0], ny - macula[1])
            if dm < 0.08 * size:
                away = math.atan2(ny - macula[1], nx - macula[0])
                heading += 0.3 * math.sin(away - heading)
                width *= 0.9
            x, y = nx, ny
            run.append((x, y))
            width *= 0.985
            if abs(width - run_w) * canvas.ss > 0.5:
                canvas.polyline(layer, run, run_w)
                run, run_w = [(x, y)], width
            n += 1
            if n >= next_branch and depth < 3:
                side = rng.choice((-1.0, 1.0))
                child_w = width * rng.uniform(0.5, 0.75)
                self.grow(layer, (x, y), heading + side * rng.uniform(0.35, 0.8), child_w,
                          rng.normal(0, 0.015), depth + 1)
                heading -= side * 0.1
                width *= 0.88
                canvas.polyline(layer, run, run_w)
                run, run_w = [(x, y)], width
                next_branch = n + rng.integers(7, 15)
        canvas.polyline(layer, run, run_w)

    def vessel_tree(self) -> None:
        """Four arcades of vein/artery pairs out of the disc, and small vessels to the macula."""
        rng, S, disc, disc_r = self.rng, self.eye.size, self.eye.disc, self.eye.disc_r
        temporal = math.pi if self.eye.side > 0 else 0.0  # direction from disc towards the macula
        for vert in (-1.0, 1.0):
            for layer, w0, tilt in (("vein", 0.020, 0.10), ("artery", 0.015, -0.10)):
                # Temporal arcade: leaves the disc vertically, bends towards the macula side.
                h0 = math.atan2(vert, 0.35 * math.cos(temporal)) + tilt * vert
                bend = -vert * 0.04 * (1 if math.cos(temporal) > 0 else -1)
                start = (disc[0] + rng.normal(0, 0.15) * disc_r, disc[1] + vert * 0.3 * disc_r)
                self.grow(layer, start, h0, w0 * S * rng.uniform(0.9, 1.1), bend, 0)
                # Nasal arcade: shorter bend, towards the nasal side.
                h1 = math.atan2(vert * 0.8, -math.cos(temporal)) + rng.normal(0, 0.15)
                self.grow(layer, (disc[0], disc[1] + vert * 0.2 * disc_r), h1, 0.75 * w0 * S,
                          vert * 0.015 * (1 if math.cos(temporal) > 0 else -1), 1)
        # Small vessels leaving the disc towards the macula.
        for _ in range(2):
            self.grow("artery", disc, temporal + rng.normal(0, 0.25), 0.006 * S, 0.0, 3)

    def lesions(self, grade: int) -> list[str]:
        """The lesions of DR grade ``grade``; returns their kinds."""
        rng, S, mac, disc = self.rng, self.eye.size, self.eye.macula, self.eye.disc
        lesions = []
        if grade >= 1:
            lesions.append("microaneurysms")
            for _ in range(rng.integers(3, 8) * grade):
                self.canvas.dot("red", self._inside_point(0.6), self._lesion_r(0.003, 0.006))
        if grade >= 2:
            lesions += ["haemorrhages", "hard exudates"]
            for _ in range(rng.integers(2, 5) * (grade - 1)):
                p = self._inside_point(0.8)
                for _ in range(3):
                    q = (p[0] + rng.normal(0, 0.006 * S), p[1] + rng.normal(0, 0.006 * S))
                    self.canvas.dot("red", q, self._lesion_r(0.005, 0.011), 170)
            for _ in range(rng.integers(2, 4) * (grade - 1)):
                p = (mac[0] + rng.normal(0, 0.12 * S), mac[1] + rng.normal(0, 0.10 * S))
                for _ in range(rng.integers(3, 8)):
                    q = (p[0] + rng.normal(0, 0.012 * S), p[1] + rng.normal(0, 0.012 * S))
                    self.canvas.dot("exudate", q, self._lesion_r(0.003, 0.007))
        if grade >= 4:
            lesions.append("new vessels")
            disc_r = self.eye.disc_r
            for _ in range(6):
                self.grow("artery",
                          (disc[0] + rng.normal(0, disc_r * 0.5),
                           disc[1] + rng.normal(0, disc_r * 0.5)),
                          rng.uniform(0, 2 * math.pi), 0.004 * S, rng.choice((-0.3, 0.3)), 3,
                          wiggle=0.5)
        return lesions

    def _lesion_r(self, lo: float, hi: float) -> float:
        return max(self.rng.uniform(lo, hi) * self.eye.size, LESION_MIN_RADIUS_PX)

    def _inside_point(self, rmax: float) -> tuple[float, float]:
        """A point inside ``rmax`` of the field of view's radius, away from the disc."""
        c, R, disc, disc_r = self.eye.centre, self.eye.radius, self.eye.disc, self.eye.disc_r
        while True:
            p = self.rng.uniform(-rmax, rmax, 2) * R
            if (
                np.hypot(*p) < rmax * R
                and np.hypot(c + p[0] - disc[0], c + p[1] - disc[1]) > 1.5 * disc_r
            ):
                return (c + p[0], c + p[1])


def _background(rng: np.random.Generator, eye: _Eye) -> np.ndarray:
    """The retina without vessels, lesions or disc: (3, S, S) float32."""
    S, c, R, mac = eye.size, eye.centre, eye.radius, eye.macula
    yy, xx, _ = _grid(S)
    # Orange-red, pigmentation varying per eye, choroidal texture at two scales.
    base = np.array([0.90, 0.42, 0.15], np.float32) * rng.uniform(0.95, 1.35)
    base[1] *= rng.uniform(0.8, 1.2)
    base[2] *= rng.uniform(0.9, 2.0)
    tex = 0.06 * _noise(rng, 6, S) + 0.035 * _noise(rng, max(8, S // 10), S)
    img = base[:, None, None] * (1.0 + tex[None]) * np.ones((3, 1, 1), np.float32)
    img[1:] *= (1.0 + 0.8 * tex[None])

    # Illumination: brighter centre, fall-off towards the rim, slightly off-centre.
    off = rng.uniform(-0.15, 0.15, 2)
    rho_off = np.hypot(xx - c - off[0] * R, yy - c - off[1] * R) / R
    img *= (1.05 - 0.42 * np.clip(rho_off, 0, 1.3) ** 2.2)[None]

    # Macula: darker and browner than the surrounding retina.
    dm2 = ((xx - mac[0]) ** 2 + (yy - mac[1]) ** 2) / (0.07 * S) ** 2
    img *= (1.0 - np.array([0.30, 0.45, 0.45], np.float32)[:, None, None] * np.exp(-dm2 / 2)[None])
    return img


def _optic_disc(img: np.ndarray, eye: _Eye) -> np.ndarray:
    """Yellow-white with a soft edge and a paler cup; drawn under the vessels."""
    yy, xx, _ = _grid(eye.size)
    disc, disc_r = eye.disc, eye.disc_r
    dd = np.sqrt(((xx - disc[0]) / 0.92) ** 2 + (yy - disc[1]) ** 2) / disc_r
    a_disc = np.clip((1.1 - dd) / 0.2, 0, 1)
    a_cup = np.clip((0.5 - dd) / 0.25, 0, 1)
    disc_col = np.array([1.0, 0.80, 0.48], np.float32)[:, None, None]
    cup_col = np.array([1.0, 0.93, 0.75], np.float32)[:, None, None]
    img = img * (1 - 0.85 * a_disc) + disc_col * 0.85 * a_disc
    return img * (1 - 0.7 * a_cup) + cup_col * 0.7 * a_cup


def _paint_layers(img: np.ndarray, cv: _Canvas) -> np.ndarray:
    """The vessel and lesion layers over ``img``."""
    vein, art = cv.get("vein"), cv.get("artery")
    img *= 1.0 - np.array([0.36, 0.60, 0.55], np.float32)[:, None, None] * vein[None]
    img *= 1.0 - np.array([0.18, 0.42, 0.40], np.float32)[:, None, None] * art[None]
    red = cv.get("red")
    if red is not None:
        img *= 1.0 - np.array([0.55, 0.85, 0.75], np.float32)[:, None, None] * red[None]
    ex = cv.get("exudate")
    if ex is not None:
        img = (
            img * (1 - 0.8 * ex[None])
            + np.array([0.98, 0.90, 0.45], np.float32)[:, None, None] * 0.8 * ex[None]
        )
    return img


def _sensor_and_rim(rng: np.random.Generator, img: np.ndarray, eye: _Eye
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Sensor noise and the field of view's edge: (uint8 (S, S, 3) image, its edge weights)."""
    S = eye.size
    yy, _, dist = _grid(S)
    # Sensor noise (uniform, std 0.008: 4x cheaper to draw than Gaussian).
    img += 0.028 * (rng.random((1, S, S), dtype=np.float32) - 0.5)
    # Soft rim: a 1-pixel anti-aliased edge of the FOV disc.
    edge = np.clip((1.0 - dist / eye.radius) * eye.radius + 0.5, 0, 1)
    if eye.cut > 0:
        edge = edge * np.clip(np.minimum(yy - eye.cut, S - 1 - eye.cut - yy) + 0.5, 0, 1)
    img *= edge[None]
    return (np.clip(img, 0, 1).transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8), edge


def generate_fundus(seed: int, size: int, dr_grade: int | None = None) -> Fundus:
    """One synthetic fundus photograph of side ``size``, deterministic in (seed, size).

    ``dr_grade``: force a DR grade (0-4); by default drawn from ``DR_PROBS``.
    One random stream, drawn in this order: anatomy, background, vessels, grade, lesions, sensor
    noise (reordering any draw changes every image: ``GENERATOR_VERSION``)."""
    rng = np.random.default_rng([seed, 0x6675])
    eye = _eye(rng, size)
    img = _background(rng, eye)
    painter = _Painter(_Canvas(size, 4 if size < 128 else 2), rng, eye)
    painter.vessel_tree()
    grade = int(rng.choice(5, p=DR_PROBS)) if dr_grade is None else int(dr_grade)
    lesions = painter.lesions(grade)
    img = _paint_layers(_optic_disc(img, eye), painter.canvas)
    out, edge = _sensor_and_rim(rng, img, eye)
    return Fundus(out, edge > 0, grade, tuple(lesions))
