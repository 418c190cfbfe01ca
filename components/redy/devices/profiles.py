"""Daily profiles computed with pvlib, windpowerlib and demandlib, as plain tuples.

The heavy libraries (pandas, pvlib, windpowerlib, demandlib) are imported here only, and only
when a profile is not in the cache, so a unit process that reads a cached profile stays small.
Profiles have one value per 15 minutes (96 a day). The cache is JSON files under
REDY_CACHE_DIR (default ~/.cache/redy).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

STEP_S = 900.0
STEPS_PER_DAY = 96


def _cache_dir() -> Path:
    return Path(os.environ.get("REDY_CACHE_DIR", Path.home() / ".cache" / "redy"))


def _cached(key: dict[str, Any], compute: Callable[[], Any]) -> Any:
    raw = orjson.dumps(key, option=orjson.OPT_SORT_KEYS)
    path = _cache_dir() / f"{key['what']}-{hashlib.sha256(raw).hexdigest()[:16]}.json"
    try:
        return orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        pass
    value = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(value))
        tmp.replace(path)
    except OSError:
        pass  # a read-only home only costs recomputation
    return value


def at(profile: Sequence[float], t_s: float) -> float:
    """Linear interpolation of a daily 15-minute profile at `t_s` seconds (wraps each day)."""
    x = (t_s % 86400.0) / STEP_S
    i = int(x) % len(profile)
    j = (i + 1) % len(profile)
    f = x - int(x)
    return profile[i] * (1.0 - f) + profile[j] * f


def clear_sky(
    latitude: float, longitude: float, altitude_m: float, tz: str, date: str
) -> dict[str, list[float]]:
    """pvlib Ineichen clear-sky irradiance (W/m2) of one day: {'ghi': [...], 'dni': [...]}.

    Uses pvlib's bundled Linke turbidity climatology, so it works offline.
    """

    def compute() -> dict[str, list[float]]:
        import pandas as pd
        import pvlib

        site = pvlib.location.Location(latitude, longitude, tz=tz, altitude=altitude_m)
        times = pd.date_range(date, periods=STEPS_PER_DAY, freq="15min", tz=tz)
        cs = site.get_clearsky(times, model="ineichen")
        return {
            "ghi": [max(0.0, float(v)) for v in cs["ghi"]],
            "dni": [max(0.0, float(v)) for v in cs["dni"]],
        }

    key = {
        "what": "clearsky",
        "lat": latitude,
        "lon": longitude,
        "alt": altitude_m,
        "tz": tz,
        "date": date,
    }
    result: dict[str, list[float]] = _cached(key, compute)
    return result


def power_curve(turbine_type: str, hub_height_m: float = 135.0) -> dict[str, list[float]]:
    """A turbine's power curve from windpowerlib's bundled library: wind speed (m/s) -> kW."""

    def compute() -> dict[str, list[float]]:
        from windpowerlib import WindTurbine

        turbine = WindTurbine(turbine_type=turbine_type, hub_height=hub_height_m)
        curve = turbine.power_curve
        if curve is None:
            raise ValueError(f"windpowerlib has no power curve for {turbine_type!r}")
        return {
            "wind_speed_ms": [float(v) for v in curve["wind_speed"]],
            "power_kw": [float(v) / 1000.0 for v in curve["value"]],
            "nominal_kw": [float(turbine.nominal_power) / 1000.0],
        }

    result: dict[str, list[float]] = _cached(
        {"what": "powercurve", "type": turbine_type, "hub": hub_height_m}, compute
    )
    return result


def standard_load(profile: str, annual_kwh: float, date: str) -> list[float]:
    """A BDEW standard load profile (demandlib: 'h0' household, 'g0'..'g6' commercial, 'l0'..)
    for one day, in kW per 15 minutes, scaled to `annual_kwh`."""

    def compute() -> list[float]:
        import pandas as pd
        from demandlib import bdew

        day = pd.Timestamp(date)
        slp = bdew.ElecSlp(day.year)
        scaled = slp.get_scaled_power_profiles({profile: annual_kwh})
        values = scaled.loc[str(day.date()), profile]
        return [float(v) for v in values][:STEPS_PER_DAY]

    result: list[float] = _cached(
        {"what": "slp", "profile": profile, "kwh": annual_kwh, "date": date}, compute
    )
    return result
