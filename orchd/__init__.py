"""orchd: an API gateway daemon with health checks, circuit breakers and a runtime registry."""

__version__ = "1.0.0"
SERVICE_NAME = "orchestrator"

__all__ = ("SERVICE_NAME", "__version__")
