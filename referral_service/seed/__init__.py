"""The demo county 青山县: a deterministic, scalable synthetic data set (no Flask here but cli.py)."""

from .accounts import DEMO_CLIENTS, DEMO_PASSWORD, DEMO_SECRET, DEMO_USERS, DemoClient, DemoUser
from .demo_county import SeedReport, is_demo_loaded, seed_demo

__all__ = [
    "DEMO_CLIENTS",
    "DEMO_PASSWORD",
    "DEMO_SECRET",
    "DEMO_USERS",
    "DemoClient",
    "DemoUser",
    "SeedReport",
    "is_demo_loaded",
    "seed_demo",
]
