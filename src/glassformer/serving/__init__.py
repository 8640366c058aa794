"""The HTTP server: OpenAI's API over a continuous-batching scheduler, and a chat page (``glassformer serve``)."""

from glassformer.serving.app import create_app
from glassformer.serving.loading import Served, load_served
from glassformer.serving.requests import Event, Overloaded, Request
from glassformer.serving.scheduler import Scheduler
from glassformer.serving.state import ServeConfig, Server

__all__ = [
    "Event",
    "Overloaded",
    "Request",
    "Scheduler",
    "ServeConfig",
    "Served",
    "Server",
    "create_app",
    "load_served",
]
